"""TFLite's 8-bit SOFTMAX (reference_ops::Softmax, gemmlowp fixed point), exactly.

Per row: d = x - max(x); where d >= diff_min, exp(d * beta * s_x) in Q0.31 from the input
scaled to Q5.26; the exps summed in Q12.19; the reciprocal of the sum by Newton-Raphson;
each output = exp * reciprocal shifted to 8 bits. The output scale is 1/256 with zero point
-128 (int8) or 0 (uint8): in the int8 domain (uint8 shifted by -128) the two files' softmax
is one function, so qsoftmax writes int8 for both. docs/int8_arithmetic.md has the formulas.
"""
import numpy as np
from numba import njit

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
SCALED_DIFF_INTEGER_BITS = 5  # exp's input is Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exps is Q12.19


@njit(cache=True, inline="always")
def _wrap(x):
    return np.int64(np.int32(x))


@njit(cache=True, inline="always")
def _srdhm(a, b):
    """SaturatingRoundingDoublingHighMul: floor((a b + 2^30) / 2^31), INT32_MIN^2 saturating."""
    return min((np.int64(a) * np.int64(b) + (1 << 30)) >> 31, INT32_MAX)


@njit(cache=True, inline="always")
def _rdbpot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent, to nearest, ties away from zero."""
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if (x & mask) > threshold else 0)


@njit(cache=True, inline="always")
def _saturating_shift_left(x, exponent):
    """SaturatingRoundingMultiplyByPOT for a positive exponent."""
    threshold = (np.int64(1) << (31 - exponent)) - 1
    if x > threshold:
        return np.int64(INT32_MAX)
    if x < -threshold:
        return np.int64(INT32_MIN)
    return _wrap(x << exponent)


@njit(cache=True, inline="always")
def _exp_quarter(a):
    """exp(a) for a in [-1/4, 0) in Q0.31: gemmlowp's Taylor series around -1/8."""
    constant_term, one_third = 1895147668, 715827883  # exp(-1/8) and 1/3 in Q0.31
    x = _wrap(a + (1 << 28))
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    poly = _rdbpot(_wrap(_srdhm(_wrap(_rdbpot(x4, 2) + x3), one_third) + x2), 1)
    return _wrap(constant_term + _srdhm(constant_term, _wrap(x + poly)))


@njit(cache=True)
def exp_on_negative_values(a):
    """gemmlowp's exp of a Q5.26 value <= 0, in Q0.31: the fraction modulo 1/4 by the
    series, then one multiplier exp(-2^k) per set bit of the rest (k = -2 .. 4)."""
    fractional_bits = 31 - SCALED_DIFF_INTEGER_BITS
    one_quarter = np.int64(1) << (fractional_bits - 2)
    mod_minus_quarter = _wrap((a & (one_quarter - 1)) - one_quarter)
    result = _exp_quarter(_saturating_shift_left(mod_minus_quarter, SCALED_DIFF_INTEGER_BITS))
    remainder = _wrap(mod_minus_quarter - a)
    if remainder & (np.int64(1) << (fractional_bits - 2)):
        result = _srdhm(result, 1672461947)
    if remainder & (np.int64(1) << (fractional_bits - 1)):
        result = _srdhm(result, 1302514674)
    if remainder & (np.int64(1) << fractional_bits):
        result = _srdhm(result, 790015084)
    if remainder & (np.int64(1) << (fractional_bits + 1)):
        result = _srdhm(result, 290630308)
    if remainder & (np.int64(1) << (fractional_bits + 2)):
        result = _srdhm(result, 39332535)
    if remainder & (np.int64(1) << (fractional_bits + 3)):
        result = _srdhm(result, 720401)
    if remainder & (np.int64(1) << (fractional_bits + 4)):
        result = _srdhm(result, 242)
    return np.int64(INT32_MAX) if a == 0 else result


@njit(cache=True)
def _one_over_one_plus_x(a):
    """1 / (1 + a) for a in [0, 1), Q0.31: three Newton-Raphson steps in Q2.29."""
    s = np.int64(a) + INT32_MAX
    half_denominator = (s + 1) // 2 if s >= 0 else -((-s + 1) // 2)  # RoundingHalfSum
    x = _wrap(1515870810 + _srdhm(half_denominator, -1010580540))
    for _ in range(3):
        one_minus = _wrap((1 << 29) - _srdhm(half_denominator, x))
        x = _wrap(x + _saturating_shift_left(_srdhm(x, one_minus), 2))
    return _saturating_shift_left(x, 1)


@njit(cache=True, inline="always")
def _leading_zeros32(x):
    """Leading zero bits of x as a uint32."""
    u = np.int64(x) & 0xFFFFFFFF
    n = 32
    while u:
        u >>= 1
        n -= 1
    return n


@njit(cache=True, nogil=True)
def qsoftmax(x, input_multiplier, input_left_shift, diff_min, out):
    """SOFTMAX of each row: x int8 [B, N] -> out int8 [B, N] (a uint8 file's output is
    out + 128). The parameters are softmax_params'."""
    B, N = x.shape
    for b in range(B):
        top = np.int64(x[b, 0])
        for i in range(N):
            top = max(top, np.int64(x[b, i]))
        total = np.int64(0)
        for i in range(N):
            d = np.int64(x[b, i]) - top
            if d >= diff_min:
                e = exp_on_negative_values(_srdhm(_wrap(d << input_left_shift), input_multiplier))
                total = _wrap(total + _rdbpot(e, ACCUMULATION_INTEGER_BITS))
        headroom = _leading_zeros32(total)
        bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom
        scale = _one_over_one_plus_x(_wrap(((np.int64(total) << headroom) & 0xFFFFFFFF) - (1 << 31)))
        exponent = bits_over_unit + 31 - 8
        if exponent > 31:
            raise ValueError("softmax: the exps sum to 512 or more, which TFLite's kernel refuses")
        for i in range(N):
            d = np.int64(x[b, i]) - top
            y = -128
            if d >= diff_min:
                e = exp_on_negative_values(_srdhm(_wrap(d << input_left_shift), input_multiplier))
                y = min(max(_rdbpot(_srdhm(scale, e), exponent) - 128, -128), 127)
            out[b, i] = y
