"""TFLite's int8 ADD, MEAN and AVERAGE_POOL_2D (global), exactly, and the Python that turns
scales into their integer parameters as TFLite's Prepare does (docs/int8_arithmetic.md).

Activations are int8; a uint8 file runs shifted by -128 (zero points and clamp bounds too),
which is exact for ADD and MEAN. Average pooling rounds differently in the two files, so
qaverage takes which rounding to follow.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from mnv2engine.errors import EngineError

from .qlanes import requantize_lanes, to_8bit_lanes

ADD_LEFT_SHIFT = 20  # ADD's inputs are scaled by 2^20 before their multipliers (8-bit types)


class QuantizedOpError(EngineError, ValueError):
    """Scales from which TFLite could not make an integer operator."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = M * 2^(shift - 31), M in [2^30, 2^31) rounded half
    away from zero from frexp's fraction; shifts below -31 flush to (0, 0)."""
    if not (math.isfinite(real) and real > 0):
        raise QuantizedOpError(f"multiplier {real!r}: a scale ratio must be positive and finite")
    fraction, shift = math.frexp(real)
    fixed = math.floor(fraction * (1 << 31) + 0.5)  # exact: fraction has 53 bits
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise QuantizedOpError(f"multiplier {real!r} needs a left shift of {shift}, which overflows int32")
    return fixed, shift


def _below_one(real: float, what: str) -> tuple[int, int]:
    if not 0.0 < real < 1.0:
        raise QuantizedOpError(f"{what}: multiplier {real!r} not in (0, 1), as TFLite requires")
    return quantize_multiplier(real)


def _scale(value, what: str) -> np.float32:
    s = np.float32(value)
    if not (np.isfinite(s) and s > 0):
        raise QuantizedOpError(f"{what}: scale {value!r} must be positive and finite")
    return s


class AddParams(NamedTuple):
    """qadd's integer arguments after the arrays, in its order."""
    a_zero: int
    a_mult: int
    a_shift: int
    b_zero: int
    b_mult: int
    b_shift: int
    y_zero: int
    y_mult: int
    y_shift: int


def add_params(scale_a, zero_a, scale_b, zero_b, scale_y, zero_y) -> AddParams:
    """ADD's Prepare (8-bit): t = 2 max(s_a, s_b) in float32; the inputs scaled by s / t, the
    sum by t / (2^20 s_y) (2^20 s_y in float32), each a multiplier below one. Zero points
    pass through (the caller's domain: int8, or uint8 shifted by -128)."""
    sa, sb, sy = _scale(scale_a, "ADD input a"), _scale(scale_b, "ADD input b"), _scale(scale_y, "ADD output")
    twice_max = np.float32(2) * max(sa, sb)
    a = _below_one(float(sa) / float(twice_max), "ADD input a")
    b = _below_one(float(sb) / float(twice_max), "ADD input b")
    y = _below_one(float(twice_max) / float(np.float32(1 << ADD_LEFT_SHIFT) * sy), "ADD output")
    return AddParams(int(zero_a), *a, int(zero_b), *b, int(zero_y), *y)


@njit(cache=True, nogil=True)
def qadd(a, a_zero, a_mult, a_shift, b, b_zero, b_mult, b_shift, y_zero, y_mult, y_shift, lo, hi, out):
    """out = ADD(a, b): each (x - zero) << 20 scaled by its multiplier, the int32 sum scaled
    to the output, + y_zero, clamped to [lo, hi]. a, b, out int8 [P, C]."""
    if a.shape != out.shape or b.shape != out.shape:
        raise ValueError("ADD's inputs and output must have one shape")
    # one loop over every element (C-contiguous arrays): a long run for the vectorizer
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for i in range(fo.size):
        sa = requantize_lanes(np.int32(np.int32(fa[i]) - a_zero) << ADD_LEFT_SHIFT, a_mult, a_shift)
        sb = requantize_lanes(np.int32(np.int32(fb[i]) - b_zero) << ADD_LEFT_SHIFT, b_mult, b_shift)
        fo[i] = to_8bit_lanes(np.int32(sa + sb), y_mult, y_shift, y_zero, lo, hi)


def mean_params(scale_x, scale_y, count: int) -> tuple[int, int]:
    """MEAN's (multiplier, shift) for a mean of `count` values: QuantizeMultiplier(s_x / s_y),
    then QuantizedMeanOrSum folds 1/count in: k = min(floor(log2 count), 32, 31 + shift),
    (multiplier << k) // count and shift - k."""
    if count < 1:
        raise QuantizedOpError(f"MEAN over {count} values")
    sx, sy = _scale(scale_x, "MEAN input"), _scale(scale_y, "MEAN output")
    mult, shift = quantize_multiplier(float(sx) / float(sy))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (mult << k) // count, shift - k


@njit(cache=True, nogil=True)
def qmean(x, x_zero, mult, shift, y_zero, lo, hi, out):
    """MEAN over the pixels: x int8 [P, C] -> out int8 [C]. The int32 sum of a channel minus
    P * x_zero, scaled by mean_params' multiplier, + y_zero, clamped to [lo, hi]."""
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
