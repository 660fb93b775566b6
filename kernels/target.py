"""The CPU that Numba compiles for, and the register tiles that fit it: one place.

Every kernel is written with 16-lane float32 vectors (simd.py), the unit of all weight
layouts. What a 16-lane vector costs depends on the target: one zmm register with
AVX-512, two ymm with AVX2, four xmm (or NEON q) registers with 128-bit SIMD. A tile's
accumulators plus its weight vectors must fit the register file, or LLVM spills them
and the kernel is bound by loads and stores instead of FMAs (on AVX2 the AVX-512 tiles
held 48 ymm accumulators for 16 registers, and ran at a third of the peak). So the
tiles are sized here, per target, in pixels x 16-lane vectors; the kernels read these
numbers as module constants, which Numba freezes into the compiled code (and Numba's
cache keys on the CPU, so the variants of several targets coexist on disk).

The target is what Numba compiles for, not necessarily the machine: NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES choose it. Numba itself passes the host's feature list with a named
CPU, so NUMBA_CPU_NAME=haswell on an AVX-512 machine would still get AVX-512 code; here,
a CPU named without features gets that CPU's own features (as Numba already does for
`generic`), so NUMBA_CPU_NAME=haswell builds the AVX2 code on any x86-64 machine. The
width is not looked up in a list of CPU names: LLVM is asked to compile one 16-lane
multiply-add for the target, and the registers it uses say the width.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as ll
from numba.core import config


@dataclass(frozen=True)
class Tiles:
    """Register tiles of one kind of target, in pixels x 16-lane vectors.

    gemm_vectors       vectors of channels of the 1x1 conv's 6-pixel tile (gemm.py)
    stem_two_vectors   the stem's tile of 6 pixels x 2 vectors (stem.py)
    stem_pixels        pixels of the stem's one-vector tile: 12 (neighbours share pairs
                       of taps) or 6 (one weight vector at a time, as the GEMM)
    pairs_vectors      widest tile of the two-inputs-per-vector 1x1 (pairs.py)
    """
    gemm_vectors: int
    stem_two_vectors: bool
    stem_pixels: int
    pairs_vectors: int

    @property
    def panel(self) -> int:
        """Weight panel width (channels) of the GEMM's packing: the channels one tile
        reads per input, as one stream."""
        return 16 * self.gemm_vectors


# Chosen by register count (accumulators + weight vectors + one broadcast must fit) and
# measured where the hardware was at hand; XNNPACK's per-ISA choices for its f32 GEMM
# (6x16 on FMA3, 7x32 on AVX-512, 6x8 on NEON) point the same way.
TILES = {
    # 32 zmm: GEMM 6 x 4 vectors = 24 accumulators + 4 weights + 1 broadcast; stem 6 x 2
    # and 12 x 1.
    "avx512": Tiles(gemm_vectors=4, stem_two_vectors=True, stem_pixels=12, pairs_vectors=3),
    # 16 ymm, two per vector: GEMM 6 x 1 = 12 accumulators + 2 weights + 1 broadcast
    # (XNNPACK's 6x16 for FMA3); the stem's tile likewise, 6 pixels x 1 vector.
    "avx2": Tiles(gemm_vectors=1, stem_two_vectors=False, stem_pixels=6, pairs_vectors=1),
    # 32 q registers, four per vector: as AVX2, 6 x 1 = 24 accumulators + 4 weights + 2
    # broadcasts, 30 registers and no spills in LLVM's code (docs/kernels.md); tested
    # under QEMU by .ci/arm, not timed on ARM hardware.
    "neon": Tiles(gemm_vectors=1, stem_two_vectors=False, stem_pixels=6, pairs_vectors=1),
    # 16 xmm, four per vector: the same tiles, correct but spilling (the baseline
    # x86-64 target, for tests; every x86-64 CPU since 2013 has AVX2).
    "sse": Tiles(gemm_vectors=1, stem_two_vectors=False, stem_pixels=6, pairs_vectors=1),
}


TILES_OVERRIDE = "MNV2_TILES"


@dataclass(frozen=True)
class Target:
    cpu: str            # the CPU name Numba compiles for
    isa: str            # a key of TILES
    vector_bits: int    # width of one SIMD register
    registers: int      # SIMD registers the compiler can allocate
    fma: bool           # fused multiply-add in hardware
    int_dot: str = "none"  # 8-bit dot product into int32: "avx512vnni", "avxvnni" or "none"

    @property
    def tiles(self) -> Tiles:
        """The tiles of this target, or of the ISA named by MNV2_TILES: any tile table
        computes the same results on any target (only the speed differs), so tests can
        run every table's code on the machine at hand, the AVX-512 tiles included."""
        return TILES[os.environ.get(TILES_OVERRIDE) or self.isa]

    def describe(self) -> str:
        return (f"{self.isa} ({self.cpu}: {self.registers} x {self.vector_bits}-bit registers, "
                f"{'FMA' if self.fma else 'no FMA'}, integer dot product: {self.int_dot})")


_PROBE = """
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
define void @probe(<16 x float>* %p) {
  %a = load <16 x float>, <16 x float>* %p
  %b = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %a, <16 x float> %a)
  store <16 x float> %b, <16 x float>* %p
  ret void
}
"""


# A multiply of 16-bit pairs added into int32 (pmaddwd + add), in plain IR: LLVM fuses it
# into one vpdpwssd where the target has VNNI (EVEX with AVX-512 VNNI, {vex} with
# AVX-VNNI), which also has vpdpbusd. Plain IR can be compiled for any target, where an
# x86 VNNI intrinsic would stop LLVM on a CPU without it.
_DOT_PROBE = """
define void @probe(<16 x i16>* %pa, <16 x i16>* %pb, <8 x i32>* %pc) {
  %a = load <16 x i16>, <16 x i16>* %pa
  %b = load <16 x i16>, <16 x i16>* %pb
  %c = load <8 x i32>, <8 x i32>* %pc
  %ae = sext <16 x i16> %a to <16 x i32>
  %be = sext <16 x i16> %b to <16 x i32>
  %m = mul nsw <16 x i32> %ae, %be
  %even = shufflevector <16 x i32> %m, <16 x i32> undef, <8 x i32> <i32 0, i32 2, i32 4, i32 6, i32 8, i32 10, i32 12, i32 14>
  %odd = shufflevector <16 x i32> %m, <16 x i32> undef, <8 x i32> <i32 1, i32 3, i32 5, i32 7, i32 9, i32 11, i32 13, i32 15>
  %s = add <8 x i32> %even, %odd
  %t = add <8 x i32> %s, %c
  store <8 x i32> %t, <8 x i32>* %pc
  ret void
}
"""


def _probe(cpu: str, features: str, source: str = _PROBE) -> str:
    """The assembly LLVM makes of one 16-lane multiply-add (or of `source`) for this CPU
    and features."""
    machine = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=2)
    return machine.emit_assembly(ll.parse_assembly(source))


def _int_dot(cpu: str, features: str, isa: str) -> str:
    """Which 8-bit dot product (vpdpbusd) the target has: with AVX-512 registers, AVX-512
    VNNI; with AVX2 only, AVX-VNNI (its VEX form, 256 bits); else none."""
    if "vpdpwssd" not in _probe(cpu, features, _DOT_PROBE):
        return "none"
    return {"avx512": "avx512vnni", "avx2": "avxvnni"}.get(isa, "none")


if config.CPU_NAME and os.environ.get("NUMBA_CPU_FEATURES") is None:
    config.CPU_FEATURES = ""  # the named CPU's features, not the host's
elif config.CPU_NAME is None and ll.get_host_cpu_name().startswith("znver"):
    # AMD Zen without AVX-512 (Zen 1-3, or Zen 4 in a VM that hides it): LLVM's Zen
    # scheduling model hoists the six broadcasts of the 6 x 16 GEMM tile above its FMAs,
    # and spills them (15 of 16 ymm registers are live); Haswell's schedule keeps them
    # in order, in registers: 38-42 GMAC/s against 27-39 on MobileNetV2's 1x1 shapes
    # (peak 46). Only the schedule changes: the features stay the host's.
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    if "zmm" not in _probe(ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten()):
        config.CPU_NAME = "haswell"
        config.CPU_FEATURES = ll.get_host_cpu_features().flatten()


@lru_cache(maxsize=None)
def current() -> Target:
    """The target of Numba's JIT in this process, as its configuration sets it."""
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
    asm = _probe(cpu, features)
    if "zmm" in asm:
        return Target(cpu, "avx512", 512, 32, True, _int_dot(cpu, features, "avx512"))
    if "ymm" in asm:
        return Target(cpu, "avx2", 256, 16, "vfmadd" in asm, _int_dot(cpu, features, "avx2"))
    if re.search(r"\bv\d+\.4s\b", asm):  # aarch64 NEON
        return Target(cpu, "neon", 128, 32, "fmla" in asm)
    return Target(cpu, "sse", 128, 16, "vfmadd" in asm or "fmadd" in asm)
