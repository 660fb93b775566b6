"""Every tile path is correct on every target: the kernel and engine tests again, compiled
for AVX2 (NUMBA_CPU_NAME=haswell) where the native run is AVX-512, and the kernel tests
for baseline x86-64 (generic: 128-bit SSE, no FMA) and with the AVX-512 tile table where
the CPU has no AVX-512. The tiles differ per target (kernels/target.py), so a path the
native run never takes is run here. Numba's cache keys on the CPU, so the builds of every
target coexist.
"""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mnv2engine.kernels.target import current

HERE = Path(__file__).parent
KERNEL_TESTS = ["test_kernels.py", "test_gemm.py"]
ENGINE_TESTS = ["test_engine.py", "test_streaming.py"]

pytestmark = [
    pytest.mark.skipif(os.environ.get("NUMBA_CPU_NAME") is not None,
                       reason="already a run for a chosen target"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="haswell and generic name x86-64 targets"),
]


def _run_for(cpu: str, files: list[str], isa: str):
    env = dict(os.environ, NUMBA_CPU_NAME=cpu)
    env.pop("NUMBA_CPU_FEATURES", None)
    probe = subprocess.run([sys.executable, "-c", "from mnv2engine.kernels.target import current; "
                            "print(current().isa)"], env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == isa, f"NUMBA_CPU_NAME={cpu} compiles for {probe.stdout.strip()!r}, not {isa}"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(HERE / f) for f in files]],
                         env=env, capture_output=True, text=True, timeout=1500, cwd=HERE.parent)
    assert run.returncode == 0, f"tests compiled for {cpu} failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def test_kernels_and_engine_compiled_for_avx2():
    if current().isa == "avx2":
        pytest.skip("the native run already compiles the AVX2 tiles")
    _run_for("haswell", KERNEL_TESTS + ENGINE_TESTS, "avx2")


def test_kernels_compiled_for_baseline_x86_64():
    _run_for("generic", KERNEL_TESTS, "sse")


def test_kernels_with_the_avx512_tiles_on_this_cpu(tmp_path):
    """The AVX-512 tile table (4-vector GEMM tiles, 64-channel panels, the stem's two-vector
    tile) run on whatever this CPU is: the same results, so this covers that code on a
    machine without AVX-512. Its own Numba cache: the table is frozen into the kernels."""
    if current().isa == "avx512":
        pytest.skip("the native run uses the AVX-512 tiles")
    env = dict(os.environ, MNV2_TILES="avx512", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[str(HERE / f) for f in KERNEL_TESTS]],
                         env=env, capture_output=True, text=True, timeout=1500, cwd=HERE.parent)
    assert run.returncode == 0, f"tests with the AVX-512 tiles failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def test_native_target_is_what_the_cpu_reports():
    """The probe (LLVM's code for one vector FMA) agrees with the kernel's CPU flags."""
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags to compare with")
    expected = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    assert current().isa == expected
    assert current().fma == ("fma" in flags)
