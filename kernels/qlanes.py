"""requant.to_8bit rewritten for vector lanes: the same integers, in a form LLVM vectorizes
over channels (int32 lanes, one int64 multiply), for the int8 kernels' inner loops.

SaturatingRoundingDoublingHighMul's nudge (+2^30 or 1 - 2^30 by the sign of the product)
followed by C's division toward zero is floor((a * b + 2^30) / 2^31) for either sign, an
arithmetic shift; the one overflow, INT32_MIN squared, is the one result above INT32_MAX.
RoundingDivideByPOT stays as TFLite writes it, in int32.
"""
import numpy as np
from numba import njit

INT32_MAX = (1 << 31) - 1


@njit(cache=True, inline="always")
def requantize_lanes(acc, mult, shift):
    """MultiplyByQuantizedMultiplier(acc, mult, shift) as an int32."""
    left = max(shift, 0)
    right = np.int32(max(-shift, 0))
    x = np.int32(np.int32(acc) << left)  # TFLite shifts left in int32
    high = np.int32(min((np.int64(x) * np.int64(mult) + (1 << 30)) >> 31, INT32_MAX))
    mask = np.int32((np.int32(1) << right) - np.int32(1))
    threshold = np.int32((mask >> 1) + np.int32(high < 0))
    return np.int32(np.int32(high >> right) + np.int32(np.int32(high & mask) > threshold))


@njit(cache=True, inline="always")
def to_8bit_lanes(acc, mult, shift, zero, lo, hi):
    """requant.to_8bit: requantize, add the output zero point, clamp to [lo, hi]. The clamp
    comes first, to [lo - zero, hi - zero], so that adding the zero point cannot wrap."""
    r = requantize_lanes(acc, mult, shift)
    return np.int32(min(max(r, np.int32(lo - zero)), np.int32(hi - zero)) + np.int32(zero))
