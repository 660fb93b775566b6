"""TFLite's fixed-point requantization, exactly (DESIGN.md, "Quantized, exactly").

An int32 accumulator becomes an 8-bit value by a real multiplier below or near one, held
as a Q0.31 integer `mult` and a power-of-two `shift` (positive: to the left), as TFLite's
QuantizeMultiplier makes them: MultiplyByQuantizedMultiplier = a rounding doubling high
multiply, then a rounding right shift, each rounding to nearest, ties away from zero
(gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT). docs/int8_arithmetic.md
writes the formulas out.
"""
import numpy as np
from numba import njit

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@njit(cache=True, inline="always")
def high_mul(a, b):
    """SaturatingRoundingDoublingHighMul of two int32 values (as int64): the high 32 bits
    of 2ab, rounded to nearest; the one overflow (INT32_MIN squared) saturates."""
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    ab = np.int64(a) * np.int64(b)
    nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
    q = ab + nudge
    # C's division truncates toward zero; >> floors
    return q >> 31 if q >= 0 else -((-q) >> 31)


@njit(cache=True, inline="always")
def divide_by_pot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@njit(cache=True, inline="always")
def requantize(acc, mult, shift):
    """MultiplyByQuantizedMultiplier(acc, mult, shift): acc * mult * 2^(shift - 31),
    rounded as TFLite rounds it (an int64 holding an int32 result)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    scaled = np.int64(np.int32(np.int64(acc) << left))  # TFLite shifts in int32
    return divide_by_pot(high_mul(scaled, mult), right)


@njit(cache=True, inline="always")
def to_8bit(acc, mult, shift, zero, lo, hi):
    """The output of a quantized op: requantize, add the output's zero point, clamp to
    [lo, hi] (the activation's range in the output's integers)."""
    return min(max(requantize(acc, mult, shift) + zero, lo), hi)
