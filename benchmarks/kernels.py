"""Per-layer speed of the engine's kernels, in GMAC/s against this core's measured FMA peak.

Every conv of MobileNetV2 runs alone, materialized, through the whole-tensor kernels
(`kernels.pointwise`, `depthwise3x3`, `conv3x3`), on random data of its real shape; the
median time of each gives its multiply-add rate. The peak is measured, not assumed: a
loop of independent 16-lane FMAs on registers only, built with the same SIMD intrinsics
as the GEMM. A table per layer (with --layers) and per kind of kernel on stdout.

    python benchmarks/kernels.py [--alpha 1.0] [--size 224] [--runs 20] [--layers] [--int8]

With --int8, the integer kernels instead (kernels/qgemm.py, qdepthwise.py, qconv.py):
the stem, every depthwise, expansion, projection, the head and the classifier, exact
against NumPy's sums requantized by kernels/requant.py, against a measured peak of the
integer dot product the 1x1 convs use: vpdpbusd's 4 bytes a lane with AVX-512 VNNI,
else int16 pairs (pmaddwd on x86).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit

from mnv2engine.kernels import conv3x3, depthwise3x3, pack_panels, pointwise
from mnv2engine.kernels.qconv import pack_qconv3x3, qconv3x3
from mnv2engine.kernels.qdepthwise import pack_qdepthwise, qdepthwise3x3
from mnv2engine.kernels.qgemm import PAIRS, pack_qweights, qpointwise
from mnv2engine.kernels.qsimd import iadd, isplat, istore, pdot, vdot
from mnv2engine.kernels.requant import to_8bit
from mnv2engine.kernels.simd import LANES, vfma, vsplat, vstore
from mnv2engine.kernels.target import current
from mnv2engine.arch import Architecture
from mnv2engine.memory import allocate

from _check import check, conv3x3 as reference_conv3x3

RELU6 = (0.0, 6.0)


TARGET = current()
# Independent FMA chains of the peak loop: enough to hide the FMA latency (4 cycles x 2
# pipes = 8 registers' worth on current x86), few enough that the chains and the
# multiplier fit the target's registers: 12 x 16 lanes on AVX-512 (12 zmm), 6 on AVX2
# (12 ymm; 12 chains there spilled, and measured half the peak), 3 on SSE (12 xmm).
REGISTERS_PER_VECTOR = 512 // TARGET.vector_bits
CHAINS = min(12, 12 // REGISTERS_PER_VECTOR if TARGET.registers == 16 else 24 // REGISTERS_PER_VECTOR)


@njit(cache=True)
def _fma_loop(n, a, out):
    """n iterations of CHAINS independent vector FMAs; the results are combined into
    out [16] so that none of the work is dead code. Written for 12 chains: with CHAINS
    a compile-time constant, the compiler drops the updates of the others (they stay
    constants outside the loop)."""
    m = vsplat(np.float32(0.999))
    v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = v8 = v9 = v10 = v11 = vsplat(a)
    for _ in range(n):
        v0, v1, v2 = vfma(v0, m, m), vfma(v1, m, m), vfma(v2, m, m)
        if CHAINS > 3:
            v3, v4, v5 = vfma(v3, m, m), vfma(v4, m, m), vfma(v5, m, m)
        if CHAINS > 6:
            v6, v7, v8 = vfma(v6, m, m), vfma(v7, m, m), vfma(v8, m, m)
        if CHAINS > 9:
            v9, v10, v11 = vfma(v9, m, m), vfma(v10, m, m), vfma(v11, m, m)
    for v in (v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11):
        v0 = vfma(v, m, v0)
    vstore(out, (0,), LANES, v0)


def fma_peak() -> float:
    """Single-core FP32 multiply-adds per second, best of a few runs (CPU time of this
    thread, so that another process on the machine does not lower it)."""
    out = np.empty(LANES, np.float32)
    _fma_loop(10, np.float32(1.0), out)
    n = 1_000_000
    best = 0.0
    for _ in range(5):
        t0 = time.thread_time()
        _fma_loop(n, np.float32(1.0), out)
        best = max(best, n * CHAINS * LANES / (time.thread_time() - t0))
    return best


# Independent dot-product chains of the integer peak loop: 24 on AVX-512 (24 zmm, one
# weight vector, one broadcast), 6 where a 16-lane vector is two or more registers.
DOT_CHAINS = 24 if TARGET.registers == 32 and REGISTERS_PER_VECTOR == 1 else 6
# The 1x1 convs' product: vpdpbusd's 4 bytes a lane with VNNI, else int16 pairs (pmaddwd)
DOT_MACS = 2 if PAIRS else 4


@njit(cache=True, inline="always")
def _dot(v, w, q):
    """One chain's step; pmaddwd multiplies w by the chain's own value (one w x w for all
    chains would be one product, LLVM's common subexpression)."""
    return pdot(v, w, v) if PAIRS else vdot(v, w, q)


@njit(cache=True)
def _dot_loop(n, q, out):
    """n iterations of DOT_CHAINS independent 16-lane dot products (16 x DOT_MACS
    multiply-adds each) on registers; combined into out [16] so that none is dead code.
    The weight vector changes every iteration (one add), or LLVM hoists the product."""
    w, step = isplat(0x01020304), isplat(q)
    v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = v8 = v9 = v10 = v11 = isplat(q)
    v12 = v13 = v14 = v15 = v16 = v17 = v18 = v19 = v20 = v21 = v22 = v23 = isplat(q)
    for _ in range(n):
        w = iadd(w, step)
        v0, v1, v2, v3, v4, v5 = _dot(v0, w, q), _dot(v1, w, q), _dot(v2, w, q), _dot(v3, w, q), _dot(v4, w, q), _dot(v5, w, q)
        if DOT_CHAINS > 6:
            v6, v7, v8, v9 = _dot(v6, w, q), _dot(v7, w, q), _dot(v8, w, q), _dot(v9, w, q)
            v10, v11, v12, v13 = _dot(v10, w, q), _dot(v11, w, q), _dot(v12, w, q), _dot(v13, w, q)
            v14, v15, v16, v17 = _dot(v14, w, q), _dot(v15, w, q), _dot(v16, w, q), _dot(v17, w, q)
            v18, v19, v20, v21 = _dot(v18, w, q), _dot(v19, w, q), _dot(v20, w, q), _dot(v21, w, q)
            v22, v23 = _dot(v22, w, q), _dot(v23, w, q)
    for v in (v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21, v22, v23):
        v0 = iadd(v, v0)
    istore(out, (0,), LANES, v0)


def dot_peak() -> float:
    """Single-core int8 multiply-adds per second of the dot-product loop, best of a few runs."""
    out = np.empty(LANES, np.int32)
    _dot_loop(10, 3, out)
    n = 1_000_000
    best = 0.0
    for _ in range(5):
        t0 = time.thread_time()
        _dot_loop(n, 3, out)
        best = max(best, n * DOT_CHAINS * DOT_MACS * LANES / (time.thread_time() - t0))
    return best


@njit(cache=True)
def _requantized(sums, bias, mult, shift, y_zero, lo, hi):
    """The reference's epilogue: requant.to_8bit of int64 sums plus bias, wrapped to int32."""
    out = np.empty(sums.shape, np.int8)
    for p in range(sums.shape[0]):
        for c in range(sums.shape[1]):
            out[p, c] = to_8bit(np.int32(sums[p, c] + bias[c]), mult[c], shift[c], y_zero, lo, hi)
    return out


def int8_layer_calls(arch: Architecture, rng):
    """(name, kind, multiply-adds, call, reference) for every int8 conv, batch 1, on
    random int8 data with the int8 model's conventions (w_zero 0, per-channel multipliers
    near a real model's, ReLU6-like clamps on the expansions, the stem and the depthwise)."""
    def requantization(C, K, relu):
        bias = rng.integers(-5000, 5000, C).astype(np.int32)
        mult = rng.integers(1 << 30, 1 << 31, C).astype(np.int32)
        shift = np.full(C, -int(np.log2(np.sqrt(K) * 128 * 80 / 100)), np.int32)
        y_zero, (lo, hi) = -128 if relu else 3, (-128, 100) if relu else (-128, 127)
        return bias, mult, shift, y_zero, lo, hi

    def pw(P, K, C, relu):
        x = aligned(rng.integers(-128, 128, (P, K)).astype(np.int8))
        w = rng.integers(-127, 128, (K, C)).astype(np.int8)
        bias, mult, shift, y_zero, lo, hi = requantization(C, K, relu)
        packed, colsum = pack_qweights(w, 0)
        packed, out = aligned(packed), aligned(np.empty((P, C), np.int8))
        return (lambda: (qpointwise(x, packed, colsum, bias, mult, shift, -128, 0, y_zero, lo, hi, out), out)[1],
                lambda: _requantized((x.astype(np.int64) + 128) @ w.astype(np.int64), bias, mult, shift,
                                     y_zero, lo, hi))

    def window(hw, cin, C, stride, kernel, pack):
        """The stem (cin = 3) or a depthwise (cin = C), x_zero 5, as TFLite pads: taps off
        the image add nothing."""
        (H, W), depthwise = hw, cin == C
        x = aligned(rng.integers(-128, 128, (1, H, W, cin)).astype(np.int8))
        w = rng.integers(-127, 128, (3, 3, C) if depthwise else (3, 3, cin, C)).astype(np.int8)
        bias, mult, shift, y_zero, lo, hi = requantization(C, 9 * (1 if depthwise else cin), True)
        pads = arch.pads(hw, stride)
        Ho, Wo = -(-H // stride), -(-W // stride)
        packed, out = pack(w, 0), aligned(np.empty((Ho, Wo, C), np.int8))
        sums = lambda: reference_conv3x3(x.astype(np.int64) - 5, w, stride, pads, depthwise).reshape(-1, C)  # noqa: E731
        return ((lambda: (kernel(x[0], packed, bias, mult, shift, 5, y_zero, lo, hi, stride, pads[0], pads[2], out),
                          out.reshape(-1, C))[1],
                 lambda: _requantized(sums().astype(np.int64), bias, mult, shift, y_zero, lo, hi)),
                Ho * Wo * 9 * C * (1 if depthwise else cin))

    calls, macs = window(arch.size, 3, arch.stem_channels, 2, qconv3x3, pack_qconv3x3)
    yield "stem", "conv3x3", macs, *calls
    for blk in arch.blocks:
        P_in, P_out = blk.in_size[0] * blk.in_size[1], blk.out_size[0] * blk.out_size[1]
        if blk.expands:
            yield f"{blk.name}/expand", "expand 1x1", P_in * blk.cin * blk.hidden, *pw(P_in, blk.cin, blk.hidden, True)
        calls, macs = window(blk.in_size, blk.hidden, blk.hidden, blk.stride, qdepthwise3x3, pack_qdepthwise)
        yield f"{blk.name}/depthwise s{blk.stride}", f"depthwise s{blk.stride}", macs, *calls
        yield f"{blk.name}/project", "project 1x1", P_out * blk.hidden * blk.cout, *pw(P_out, blk.hidden, blk.cout, False)
    P = arch.blocks[-1].out_size[0] * arch.blocks[-1].out_size[1]
    yield "head", "head 1x1", P * arch.blocks[-1].cout * arch.last_channels, *pw(P, arch.blocks[-1].cout, arch.last_channels, True)
    yield "classifier", "classifier", arch.last_channels * arch.classes, *pw(1, arch.last_channels, arch.classes, False)


def median_seconds(fn, runs: int) -> float:
    """Median CPU time of this thread per call (one thread computes: what another
    process on the machine takes is not counted)."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of a starting on a cache line, as the engine's arena and weights do (NumPy's
    own arrays start 16 bytes into one, and then half the 32-byte loads cross a line)."""
    out = allocate(a.nbytes).view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def layer_calls(arch: Architecture, rng):
    """(name, kind, multiply-adds, call, reference) for every conv of the network, batch 1:
    call() runs the kernel and returns its output, reference() the NumPy one."""
    def rand(*shape):
        return aligned(rng.standard_normal(shape, dtype=np.float32))

    def pw(P, cin, cout, lo, hi):
        x, w, b, out = rand(P, cin), rand(cin, cout), rand(cout), aligned(np.empty((P, cout), np.float32))
        panels, none = aligned(pack_panels(w)), np.empty((0, cout), np.float32)
        return (lambda: (pointwise(x, panels, b, lo, hi, out, none, False), out)[1],
                lambda: np.clip(x.astype(np.float64) @ w + b, lo, hi))

    def dw(hw, c, stride):
        H, W = hw
        x, w, b = rand(1, H, W, c), rand(3, 3, c), rand(c)
        pads = np.array(arch.pads(hw, stride), np.int64)
        Ho, Wo = -(-H // stride), -(-W // stride)
        out = aligned(np.empty((1, Ho, Wo, c), np.float32))
        return (lambda: (depthwise3x3(x, w, b, stride, pads, *RELU6, out), out)[1],
                lambda: np.clip(reference_conv3x3(x, w, stride, pads, depthwise=True) + b, *RELU6)), Ho * Wo * 9 * c

    H, W = arch.size
    c0 = arch.stem_channels
    x, w, b = rand(1, H, W, 3), rand(3, 3, 3, c0), rand(c0)
    pads = np.array(arch.pads(arch.size, 2), np.int64)
    Ho, Wo = arch.stem_out_size
    out = aligned(np.empty((1, Ho, Wo, c0), np.float32))
    yield ("stem", "conv3x3", Ho * Wo * 27 * c0, lambda: (conv3x3(x, w, b, 2, pads, *RELU6, out), out)[1],
           lambda: np.clip(reference_conv3x3(x, w, 2, pads) + b, *RELU6))
    for blk in arch.blocks:
        P_in = blk.in_size[0] * blk.in_size[1]
        P_out = blk.out_size[0] * blk.out_size[1]
        if blk.expands:
            yield f"{blk.name}/expand", "expand 1x1", P_in * blk.cin * blk.hidden, *pw(P_in, blk.cin, blk.hidden, *RELU6)
        calls, macs = dw(blk.in_size, blk.hidden, blk.stride)
        yield f"{blk.name}/depthwise s{blk.stride}", f"depthwise s{blk.stride}", macs, *calls
        yield f"{blk.name}/project", "project 1x1", P_out * blk.hidden * blk.cout, *pw(P_out, blk.hidden, blk.cout, -np.inf, np.inf)
    P = arch.blocks[-1].out_size[0] * arch.blocks[-1].out_size[1]
    yield "head", "head 1x1", P * arch.blocks[-1].cout * arch.last_channels, *pw(P, arch.blocks[-1].cout, arch.last_channels, *RELU6)
    yield "classifier", "classifier", arch.last_channels * arch.classes, *pw(1, arch.last_channels, arch.classes, -np.inf, np.inf)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--layers", action="store_true", help="print every layer, not only the totals per kind")
    ap.add_argument("--int8", action="store_true", help="the integer kernels against the integer dot-product peak")
    args = ap.parse_args(argv)

    arch = Architecture(alpha=args.alpha, size=args.size)
    if args.int8:
        peak = dot_peak()
        layers = list(int8_layer_calls(arch, np.random.default_rng(0)))
        check("NumPy int64 sums + requant.to_8bit, exact", [(name, call(), reference()) for name, _, _, call, reference in layers],
              rel=0.0, summary=not args.layers)
    else:
        peak = fma_peak()
        layers = list(layer_calls(arch, np.random.default_rng(0)))
        check("NumPy float64, per layer", [(name, call(), reference()) for name, _, _, call, reference in layers],
              summary=not args.layers)
    rows, kinds = [], {}
    for name, kind, macs, call, _ in layers:
        sec = median_seconds(call, args.runs)
        rows.append((name, macs, sec))
        k = kinds.setdefault(kind, [0, 0.0])
        k[0] += macs
        k[1] += sec

    print(f"MobileNetV2 {args.alpha}/{args.size}, batch 1, 1 thread, median of {args.runs} runs per layer")
    print(f"target: {TARGET.describe()}")
    if args.int8:
        print(f"measured int8 dot-product peak: {peak / 1e9:.1f} GMAC/s (one core; {DOT_CHAINS} chains of 16 lanes x "
              f"{'2 int16 (pmaddwd)' if PAIRS else '4 bytes (vpdpbusd)'})")
    else:
        print(f"measured FMA peak: {peak / 1e9:.1f} GMAC/s (fp32, one core; {CHAINS} chains of 16 lanes)")
    if args.layers:
        print(f"\n{'layer':26} {'MMAC':>8} {'ms':>7} {'GMAC/s':>7} {'% peak':>7}")
        for name, macs, sec in rows:
            print(f"{name:26} {macs / 1e6:8.2f} {sec * 1e3:7.3f} {macs / sec / 1e9:7.1f} {100 * macs / sec / peak:6.0f}%")
    total_macs = sum(m for m, _ in kinds.values())
    total_sec = sum(s for _, s in kinds.values())
    print(f"\n{'kernel':16} {'MMAC':>8} {'ms':>7} {'share':>6} {'GMAC/s':>7} {'% peak':>7}")
    for kind, (macs, sec) in kinds.items():
        print(f"{kind:16} {macs / 1e6:8.1f} {sec * 1e3:7.2f} {100 * sec / total_sec:5.0f}% "
              f"{macs / sec / 1e9:7.1f} {100 * macs / sec / peak:6.0f}%")
    print(f"{'all layers':16} {total_macs / 1e6:8.1f} {total_sec * 1e3:7.2f} {'100%':>6} "
          f"{total_macs / total_sec / 1e9:7.1f} {100 * total_macs / total_sec / peak:6.0f}%")


if __name__ == "__main__":
    main()
