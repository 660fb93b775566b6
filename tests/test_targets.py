"""Every tile path is correct on every target: the kernel and engine tests again, compiled
for AVX2 (NUMBA_CPU_NAME=haswell) where the native run is AVX-512, and the kernel tests
for baseline x86-64 (generic: 128-bit SSE, no FMA), for baseline aarch64 (generic) where
the native CPU is a named ARM core, and with the AVX-512 tile table where the CPU has no
AVX-512. The tiles differ per target (kernels/target.py), so a path the native run never
takes is run here. Numba's cache keys on the CPU, so the builds of every target coexist.
"""
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mnv2engine.kernels.target import current

import rebuilds

HERE = Path(__file__).parent
KERNEL_TESTS = ["test_kernels.py", "test_gemm.py"]
ENGINE_TESTS = ["test_engine.py", "test_streaming.py"]

X86 = platform.machine() in ("x86_64", "AMD64")
ARM64 = platform.machine() in ("aarch64", "arm64")
x86_only = pytest.mark.skipif(not X86, reason="haswell and generic name x86-64 targets here")

CHOSEN = os.environ.get("NUMBA_CPU_NAME") is not None
pytestmark = pytest.mark.skipif(CHOSEN, reason="already a run for a chosen target")

# the runs of other builds (rebuilds.py), declared where their tests will not skip
AVX2_RUN = X86 and not CHOSEN and current().isa != "avx2"
AVX512_TILES_RUN = not CHOSEN and current().isa != "avx512"
ARM_GENERIC_RUN = ARM64 and not CHOSEN and current().cpu != "generic"
if AVX2_RUN:
    rebuilds.declare("haswell", {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": None}, KERNEL_TESTS + ENGINE_TESTS)
if X86 and not CHOSEN:
    rebuilds.declare("generic x86-64", {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": None}, KERNEL_TESTS)
if AVX512_TILES_RUN:  # its own Numba cache: the table is frozen into the kernels
    rebuilds.declare("avx512 tiles", {"MNV2_TILES": "avx512", "NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-")},
                     KERNEL_TESTS)
if ARM_GENERIC_RUN:
    rebuilds.declare("generic aarch64", {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": None}, KERNEL_TESTS)


def _check_build(name: str, cpu: str, isa: str):
    env = dict(os.environ, NUMBA_CPU_NAME=cpu)
    env.pop("NUMBA_CPU_FEATURES", None)
    probe = subprocess.run([sys.executable, "-c", "from mnv2engine.kernels.target import current; "
                            "print(current().isa)"], env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == isa, f"NUMBA_CPU_NAME={cpu} compiles for {probe.stdout.strip()!r}, not {isa}"
    rebuilds.check(name, f"tests compiled for {cpu}")


@pytest.mark.slow
@pytest.mark.rebuild("haswell")
@x86_only
def test_kernels_and_engine_compiled_for_avx2():
    if not AVX2_RUN:
        pytest.skip("the native run already compiles the AVX2 tiles")
    _check_build("haswell", "haswell", "avx2")


@pytest.mark.slow
@pytest.mark.rebuild("generic x86-64")
@x86_only
def test_kernels_compiled_for_baseline_x86_64():
    _check_build("generic x86-64", "generic", "sse")


@pytest.mark.slow
@pytest.mark.rebuild("avx512 tiles")
def test_kernels_with_the_avx512_tiles_on_this_cpu():
    """The AVX-512 tile table (4-vector GEMM tiles, 64-channel panels, the stem's two-vector
    tile) run on whatever this CPU is: the same results, so this covers that code on a
    machine without AVX-512."""
    if not AVX512_TILES_RUN:
        pytest.skip("the native run uses the AVX-512 tiles")
    rebuilds.check("avx512 tiles", "tests with the AVX-512 tiles")


@pytest.mark.slow
@pytest.mark.rebuild("generic aarch64")
@pytest.mark.skipif(not ARM64, reason="generic names the aarch64 baseline here")
def test_kernels_compiled_for_baseline_aarch64():
    """The 128-bit NEON tiles as LLVM compiles them for any ARMv8-A, where the native
    build is for a named core (its own schedule and extensions)."""
    if not ARM_GENERIC_RUN:
        pytest.skip("the native target is already generic (as under QEMU, whose /proc/cpuinfo names no ARM core)")
    _check_build("generic aarch64", "generic", "neon")


def cpuinfo_line(key: str) -> set[str]:
    """The words of /proc/cpuinfo's first `key` line (empty where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    words = next((l.partition(":")[2].split() for l in lines if l.split(":")[0].strip() == key), [])
    return set(words)


# Bits of the kernel's AT_HWCAP on aarch64 (asm/hwcap.h), which its Features line spells out.
AT_HWCAP, HWCAP_FP, HWCAP_ASIMD = 16, 1 << 0, 1 << 1


def arm_features() -> set[str]:
    """The CPU's features as aarch64 Linux lists them: the Features line of /proc/cpuinfo,
    or, where that file has none (QEMU 7.2's user mode shows the host's cpuinfo), the
    same bits from the auxiliary vector, which QEMU fills for the CPU it emulates."""
    features = cpuinfo_line("Features")
    if features:
        return features
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap = getauxval(AT_HWCAP)
    return {name for bit, name in ((HWCAP_FP, "fp"), (HWCAP_ASIMD, "asimd")) if hwcap & bit}


def test_native_target_is_what_the_cpu_reports():
    """The probe (LLVM's code for one vector FMA) agrees with the CPU's own list of
    features: `flags` on x86, `Features` on aarch64 (AdvSIMD, "asimd", has vector FMA)."""
    if ARM64:
        features = arm_features()
        assert {"fp", "asimd"} <= features, f"an aarch64 CPU without AdvSIMD? features: {sorted(features)}"
        assert (current().isa, current().vector_bits, current().registers, current().fma) == ("neon", 128, 32, True)
        return
    flags = cpuinfo_line("flags")
    if not X86 or not flags:
        pytest.skip(f"no /proc/cpuinfo flags of an x86 CPU to compare with on {platform.machine()}")
    expected = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    assert current().isa == expected
    assert current().fma == ("fma" in flags)
