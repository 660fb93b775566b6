"""TFLite's int8 ADD, MEAN and AVERAGE_POOL_2D (global), exactly (docs/int8_arithmetic.md);
their integer parameters come from mnv2engine/quantized.py, as TFLite's Prepare makes them.

Activations are int8; a uint8 file runs shifted by -128 (zero points and clamp bounds too),
which is exact for ADD and MEAN. Average pooling rounds differently in the two files, so
qaverage takes which rounding to follow.
"""
import numpy as np
from numba import njit

from .qlanes import to_8bit_lanes
from .qsimd import LANES, bstore, iadd, iload, imul, isplat, isub, vbounds, vrequant_with, vscales, xload

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
ADD_LEFT_SHIFT = 20  # ADD's inputs are scaled by 2^20 before their multipliers (8-bit types)


@njit(cache=True, inline="always")
def _add16(fa, fb, fo, i, n, za, a_scales, zb, b_scales, y_scales, wide, bounds):
    """Elements i..i+n-1 of ADD, in 16 int32 lanes."""
    scale = isplat(1 << ADD_LEFT_SHIFT)
    sa = vrequant_with(imul(isub(xload(fa, (i,), n), za), scale), a_scales, wide)
    sb = vrequant_with(imul(isub(xload(fb, (i,), n), zb), scale), b_scales, wide)
    bstore(fo, (i,), n, vrequant_with(iadd(sa, sb), y_scales, bounds))


@njit(cache=True, nogil=True, _nrt=False)
def qadd(a, a_zero, a_mult, a_shift, b, b_zero, b_mult, b_shift, y_zero, y_mult, y_shift, lo, hi, out):
    """out = ADD(a, b): each (x - zero) << 20 scaled by its multiplier, the int32 sum scaled
    to the output, + y_zero, clamped to [lo, hi]. a, b, out int8 [P, C]. In 16 int32 lanes
    over all elements at once (C-contiguous arrays)."""
    if a.shape != out.shape or b.shape != out.shape:
        raise ValueError("ADD's inputs and output must have one shape")
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    za, zb = isplat(a_zero), isplat(b_zero)
    a_scales, b_scales = vscales(isplat(a_mult), isplat(a_shift)), vscales(isplat(b_mult), isplat(b_shift))
    y_scales = vscales(isplat(y_mult), isplat(y_shift))
    wide, bounds = vbounds(0, INT32_MIN, INT32_MAX), vbounds(y_zero, lo, hi)
    size = fo.size
    whole = size - size % LANES
    for i in range(0, whole, LANES):
        _add16(fa, fb, fo, i, LANES, za, a_scales, zb, b_scales, y_scales, wide, bounds)
    if whole < size:
        _add16(fa, fb, fo, whole, size - whole, za, a_scales, zb, b_scales, y_scales, wide, bounds)


@njit(cache=True, nogil=True)
def qmean(x, x_zero, mult, shift, y_zero, lo, hi, out):
    """MEAN over the pixels: x int8 [P, C] -> out int8 [C]. The int32 sum of a channel minus
    P * x_zero, scaled by the mean's multiplier (1/P folded in), + y_zero, clamped to [lo, hi]."""
    P, C = x.shape
    for c in range(C):
        total = np.int32(0)
        for p in range(P):
            total = np.int32(total + np.int32(x[p, c]))
        centered = np.int32(total - np.int32(x_zero * P))
        out[c] = to_8bit_lanes(centered, mult, shift, y_zero, lo, hi)


@njit(cache=True, nogil=True)
def qaverage(x, lo, hi, out, uint8_rounding):
    """AVERAGE_POOL_2D over the whole map: x int8 [P, C] -> out int8 [C], the sum of the
    raw values divided by P. int8 files round half away from zero. uint8 files compute
    (sum_u + P/2) / P on the unshifted values u = x + 128; as sum_u = sum + 128 P, that is
    floor((sum + P/2) / P) + 128, so in the shifted domain: floor((sum + P/2) / P)."""
    P, C = x.shape
    half = P // 2
    for c in range(C):
        total = np.int64(0)
        for p in range(P):
            total += x[p, c]
        if uint8_rounding:
            y = (total + half) // P  # floor division
        else:
            num = total + half if total > 0 else total - half
            y = num // P if num >= 0 else -((-num) // P)  # C's division toward zero
        out[c] = min(max(y, lo), hi)


@njit(cache=True, nogil=True)
def qquantize(x, scale, zero, lo, hi, shift, out):
    """TFLite's QUANTIZE of float32 x into out int8 (any shapes of one size): round(x /
    scale) (float32, halves away from zero) + zero, clamped to [lo, hi] in the file's
    integers, then + shift into the kernels' int8 (uint8 files: -128)."""
    fx, fo = x.reshape(-1), out.reshape(-1)
    s = np.float32(scale)
    for i in range(fo.size):
        v = fx[i] / s
        r = np.floor(abs(v) + np.float32(0.5))
        q = np.int64(r if v >= 0 else -r) + zero
        fo[i] = min(max(q, lo), hi) + shift


@njit(cache=True, nogil=True)
def qshift(x, out):
    """uint8 values as the kernels' int8: x - 128."""
    fx, fo = x.reshape(-1), out.reshape(-1)
    for i in range(fo.size):
        fo[i] = np.int16(fx[i]) - 128


@njit(cache=True, nogil=True, _nrt=False)
def qrequantize(acc, bias, mult, shift, y_zero, lo, hi, out):
    """The end of a conv whose int32 sums were added up in parts (a sliced projection):
    out int8 [P, C] = to_8bit(acc + bias) per channel; acc int32 [P, C]. 16 channels at a
    time, each vector's bias and multipliers loaded once for all the pixels."""
    P, C = out.shape
    bounds = vbounds(y_zero, lo, hi)
    for c in range(0, C, LANES):
        n = min(LANES, C - c)
        b, scales = iload(bias, (c,), n), vscales(iload(mult, (c,), n), iload(shift, (c,), n))
        for p in range(P):
            bstore(out, (p, c), n, vrequant_with(iadd(iload(acc, (p, c), n), b), scales, bounds))
