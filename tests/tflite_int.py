"""TFLite's integer arithmetic in naive, vectorized NumPy, written from its reference
kernels (tensorflow/lite/kernels/internal/reference, gemmlowp's fixedpoint.h) and from the
Prepare code of the op kernels that turns scales into multipliers and shifts.

The default build of TFLite (TFLITE_SINGLE_ROUNDING=0) is followed: "double rounding",
a saturating rounding doubling high multiply then a rounding right shift. Integers are
carried in int64 arrays and wrapped to int32 where the C++ does int32 arithmetic.

`run(path, input)` walks a .tflite file's operators in order and returns every tensor,
keyed by tensor index. It knows the operators of the quantized MobileNetV2s (CONV_2D,
DEPTHWISE_CONV_2D, ADD, AVERAGE_POOL_2D, MEAN, RESHAPE, SOFTMAX, QUANTIZE) and
FULLY_CONNECTED, in int8 and uint8. (FULLY_CONNECTED's reference kernels requantize in
double, not in fixed point; that is followed too.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnv2engine.errors import EngineError

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class UnsupportedModelError(EngineError):
    """A .tflite file with an operator, type or option this reference does not implement."""


# -- fixed-point primitives (gemmlowp fixedpoint.h, kernels/internal/common.cc) -------------

def wrap32(x):
    """int64 values reduced to int32 two's complement, as an int32 overflow wraps."""
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def trunc_div(a, b):
    """C integer division (rounds toward zero) of int64 arrays by a positive divisor."""
    a = np.asarray(a, np.int64)
    return np.where(a >= 0, a // b, -((-a) // b))


def round_half_away(x):
    """std::round / TfLiteRound: halves go away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def saturating_rounding_doubling_high_mul(a, b):
    """(a * b + nudge) / 2^31 rounded toward zero, the nudge being +-2^30 by the sign of
    the product; INT32_MIN * INT32_MIN (the one product that overflows) gives INT32_MAX."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = trunc_div(nudged, 1 << 31)
    return np.where((a == b) & (a == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent):
    """x / 2^exponent rounded to nearest, ties away from zero (0 <= exponent <= 31)."""
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """x * multiplier * 2^(shift - 31): a left shift by max(shift, 0) (wrapping, as in C),
    the doubling high multiply, then a rounding right shift by max(-shift, 0)."""
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted = wrap32(np.asarray(x, np.int64) << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def multiply_by_quantized_multiplier_greater_than_one(x, multiplier, left_shift):
    """The softmax's input scaling: x << left_shift (wrapping), then the high multiply."""
    return saturating_rounding_doubling_high_mul(wrap32(np.asarray(x, np.int64) << left_shift), multiplier)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = q * 2^shift with q in [0.5, 1) (frexp), q rounded to
    Q0.31 (half away from zero); q == 1 after rounding becomes 0.5 with shift + 1;
    shifts below -31 flush the multiplier to zero."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(round_half_away(q * (1 << 31)))
    if q_fixed > (1 << 31):
        raise ValueError(f"multiplier {real!r} rounds past 2^31")
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    return q_fixed, shift


def quantize_multiplier_smaller_than_one(real: float) -> tuple[int, int]:
    if not 0.0 < real < 1.0:
        raise ValueError(f"multiplier {real!r} not in (0, 1)")
    return quantize_multiplier(real)


def quantize_multiplier_greater_than_one(real: float) -> tuple[int, int]:
    if not real > 1.0:
        raise ValueError(f"multiplier {real!r} not above 1")
    return quantize_multiplier(real)


# -- quantization parameters -------------------------------------------------------------

@dataclass(frozen=True)
class Quant:
    """A tensor's affine quantization: real = scale * (q - zero_point), per channel along
    `axis` where `scale` has several entries. Scales stay float32, as the file stores them."""
    scale: np.ndarray  # float32 [1] or [channels]
    zero_point: np.ndarray  # int64, same length
    axis: int = 0

    @staticmethod
    def of(scale, zero_point, axis=0) -> "Quant":
        return Quant(np.atleast_1d(np.asarray(scale, np.float32)),
                     np.atleast_1d(np.asarray(zero_point, np.int64)), axis)

    @property
    def s(self) -> np.float32:
        return self.scale[0]

    @property
    def zp(self) -> int:
        return int(self.zero_point[0])


def dtype_range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# TFLite's ActivationFunctionType codes
ACT_NONE, ACT_RELU, ACT_RELU_N1_TO_1, ACT_RELU6 = 0, 1, 2, 3


def activation_range(activation: int, out: Quant, dtype) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the clamp bounds are the activation's real bounds
    quantized in float32 (round(f / scale) + zero point), within the dtype's range."""
    qmin, qmax = dtype_range(dtype)

    def q(f):
        return out.zp + int(round_half_away(np.float32(f) / out.s))

    if activation == ACT_NONE:
        return qmin, qmax
    if activation == ACT_RELU:
        return max(qmin, q(0.0)), qmax
    if activation == ACT_RELU6:
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == ACT_RELU_N1_TO_1:
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise UnsupportedModelError(f"fused activation {activation} is not a quantized activation TFLite implements")


def clamp_cast(acc, lo: int, hi: int, dtype) -> np.ndarray:
    return np.clip(acc, lo, hi).astype(dtype)


# -- multipliers as the op kernels' Prepare computes them ----------------------------------

def conv_multipliers(inp: Quant, filt: Quant, out: Quant, channels: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (multiplier, shift) of CONV_2D / DEPTHWISE_CONV_2D.
    int8 (PopulateConvolutionQuantizationParams' per-channel loop): the scales multiplied
    in double, in_scale * filter_scale / out_scale. uint8 (GetQuantizedConvolutionMultipler):
    in_scale * filter_scale multiplied in float32, then divided in double."""
    if np.dtype(dtype) == np.uint8:
        product = np.float32(inp.s * filt.s)
        m, s = quantize_multiplier(float(product) / float(out.s))
        return np.full(channels, m, np.int64), np.full(channels, s, np.int64)
    scales = filt.scale if len(filt.scale) > 1 else np.repeat(filt.scale, channels)
    pairs = [quantize_multiplier(float(inp.s) * float(f) / float(out.s)) for f in scales]
    return np.array([m for m, _ in pairs], np.int64), np.array([s for _, s in pairs], np.int64)


def fully_connected_scales(inp: Quant, filt: Quant, out: Quant, channels: int) -> np.ndarray:
    """FULLY_CONNECTED's reference kernels (per-tensor and per-channel alike) requantize in
    floating point, not with a fixed-point multiplier: s_in * s_w / s_out in double."""
    scales = filt.scale if len(filt.scale) > 1 else np.repeat(filt.scale, channels)
    return np.array([float(inp.s) * float(f) / float(out.s) for f in scales], np.float64)


# -- padding (kernels/padding.h) -------------------------------------------------------------

SAME, VALID = 0, 1  # TFLite's Padding enum


def out_size_and_pad(size: int, k: int, stride: int, dilation: int, padding: int) -> tuple[int, int]:
    """(output size, padding before) of one spatial axis. SAME: ceil(size / stride) outputs
    and half the total padding before (the odd one after); VALID: no padding."""
    effective = (k - 1) * dilation + 1
    if padding == SAME:
        out = (size + stride - 1) // stride
    elif padding == VALID:
        out = (size - effective + stride) // stride
    else:
        raise UnsupportedModelError(f"padding {padding} is neither SAME nor VALID")
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2


def padded_windows(x, kh, kw, stride, dilation, padding, fill=0):
    """x [N, H, W, C] padded with `fill`, and the (ky, kx) -> strided view of the window
    offsets: view[n, oy, ox, c] = padded[n, oy * sh + ky * dh, ox * sw + kx * dw, c]."""
    (sh, sw), (dh, dw) = stride, dilation
    N, H, W, C = x.shape
    Ho, top = out_size_and_pad(H, kh, sh, dh, padding)
    Wo, left = out_size_and_pad(W, kw, sw, dw, padding)
    bottom = max((Ho - 1) * sh + (kh - 1) * dh + 1 - H - top, 0)
    right = max((Wo - 1) * sw + (kw - 1) * dw + 1 - W - left, 0)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)

    def window(ky, kx):
        y0, x0 = ky * dh, kx * dw
        return xp[:, y0:y0 + (Ho - 1) * sh + 1:sh, x0:x0 + (Wo - 1) * sw + 1:sw, :]
    return window, Ho, Wo


# -- operators ------------------------------------------------------------------------------

def requantize_acc(acc, bias, multiplier, shift, out_zp, lo, hi, dtype):
    """The epilogue of every conv-like kernel: int32 acc + bias, scaled by the per-channel
    fixed-point multiplier, + output zero point, clamped to the activation range."""
    acc = wrap32(acc)
    if bias is not None:
        acc = wrap32(acc + np.asarray(bias, np.int64))
    return clamp_cast(multiply_by_quantized_multiplier(acc, multiplier, shift) + out_zp, lo, hi, dtype)


def conv2d(x, x_zp, w, w_zp, bias, multiplier, shift, out_zp, lo, hi, stride=(1, 1),
           dilation=(1, 1), padding=SAME, dtype=np.int8):
    """CONV_2D, x [N, H, W, Cin], w [Cout, KH, KW, Cin] (OHWI). acc = sum (w - w_zp)(x - x_zp)
    over the window's in-image points; the padding adds nothing, so x - x_zp is padded
    with 0. The sums go through a float64 GEMM: every term is an integer below 2^16 and
    every partial sum far below 2^53, so the float64 result is the exact integer."""
    Cout, KH, KW, Cin = w.shape
    xc = np.asarray(x, np.int64) - x_zp
    wc = np.asarray(w, np.int64) - w_zp
    window, Ho, Wo = padded_windows(xc, KH, KW, stride, dilation, padding)
    patches = np.stack([window(ky, kx) for ky in range(KH) for kx in range(KW)], axis=3)  # N,Ho,Wo,K,Cin
    cols = patches.reshape(-1, KH * KW * Cin).astype(np.float64)
    acc = (cols @ wc.reshape(Cout, -1).T.astype(np.float64)).astype(np.int64)
    acc = acc.reshape(x.shape[0], Ho, Wo, Cout)
    return requantize_acc(acc, bias, multiplier, shift, out_zp, lo, hi, dtype)


def depthwise_conv2d(x, x_zp, w, w_zp, bias, multiplier, shift, out_zp, lo, hi, stride=(1, 1),
                     dilation=(1, 1), padding=SAME, depth_multiplier=1, dtype=np.int8):
    """DEPTHWISE_CONV_2D, w [1, KH, KW, Cin * depth_multiplier]; output channel
    ic * depth_multiplier + m reads input channel ic."""
    _, KH, KW, Cout = w.shape
    if Cout != x.shape[3] * depth_multiplier:
        raise UnsupportedModelError(f"depthwise filter has {Cout} channels, input {x.shape[3]} x {depth_multiplier}")
    xc = np.repeat(np.asarray(x, np.int64) - x_zp, depth_multiplier, axis=3)
    wc = np.asarray(w, np.int64)[0] - w_zp
    window, Ho, Wo = padded_windows(xc, KH, KW, stride, dilation, padding)
    acc = np.zeros((x.shape[0], Ho, Wo, Cout), np.int64)
    for ky in range(KH):
        for kx in range(KW):
            acc += window(ky, kx) * wc[ky, kx]
    return requantize_acc(acc, bias, multiplier, shift, out_zp, lo, hi, dtype)


def fully_connected(x, x_zp, w, w_zp, bias, effective_scale, out_zp, lo, hi, dtype=np.int8):
    """FULLY_CONNECTED, x [B, D], w [O, D]: acc = sum (w - w_zp)(x - x_zp) + bias in int32,
    then round(double(acc) * effective_scale) (half away from zero) + out_zp, clamped."""
    xc = np.asarray(x, np.int64) - x_zp
    wc = np.asarray(w, np.int64) - w_zp
    acc = wrap32((xc.astype(np.float64) @ wc.T.astype(np.float64)).astype(np.int64))
    if bias is not None:
        acc = wrap32(acc + np.asarray(bias, np.int64))
    scaled = round_half_away(acc.astype(np.float64) * effective_scale).astype(np.int64)
    return clamp_cast(scaled + out_zp, lo, hi, dtype)


@dataclass(frozen=True)
class AddParams:
    left_shift: int
    input1: tuple[int, int]
    input2: tuple[int, int]
    output: tuple[int, int]


def add_params(in1: Quant, in2: Quant, out: Quant) -> AddParams:
    """ADD's Prepare for 8-bit: both inputs shifted left by 20 bits, scaled by
    s_i / (2 max(s1, s2)) (each below 1), summed, then scaled by 2 max(s1, s2) / (2^20 s_out).
    2 * max and 2^20 * s_out are float32 products, as in the C++."""
    twice_max = float(np.float32(2) * max(in1.s, in2.s))
    left_shift = 20
    return AddParams(
        left_shift,
        quantize_multiplier_smaller_than_one(float(in1.s) / twice_max),
        quantize_multiplier_smaller_than_one(float(in2.s) / twice_max),
        quantize_multiplier_smaller_than_one(twice_max / float(np.float32(1 << left_shift) * out.s)))


def add(x1, zp1, x2, zp2, p: AddParams, out_zp, lo, hi, dtype=np.int8):
    """ADD (int8 and uint8 alike): each input (x - zp) << 20, scaled below one; their sum
    scaled to the output, + output zero point, clamped. Broadcasts as NumPy does."""
    def scaled(x, zp, mult_shift):
        shifted = wrap32((np.asarray(x, np.int64) - zp) << p.left_shift)
        return multiply_by_quantized_multiplier(shifted, *mult_shift)
    raw = wrap32(scaled(x1, zp1, p.input1) + scaled(x2, zp2, p.input2))
    return clamp_cast(multiply_by_quantized_multiplier(raw, *p.output) + out_zp, lo, hi, dtype)


def average_pool2d(x, kh, kw, stride, padding, lo, hi, dtype):
    """AVERAGE_POOL_2D on the raw quantized values (input and output share their
    quantization): the sum over the window's in-image points divided by their count,
    rounded half away from zero (uint8: (sum + n/2) / n)."""
    x64 = np.asarray(x, np.int64)
    window, Ho, Wo = padded_windows(x64, kh, kw, stride, (1, 1), padding)
    ones, _, _ = padded_windows(np.ones_like(x64[..., :1]), kh, kw, stride, (1, 1), padding)
    total = sum(window(ky, kx) for ky in range(kh) for kx in range(kw))
    count = sum(ones(ky, kx) for ky in range(kh) for kx in range(kw))
    return clamp_cast(_div_half_away(total, count), lo, hi, dtype)


def _div_half_away(total, count):
    """(total +- count/2) / count with C truncation, the sign of total choosing +-."""
    total, count = np.asarray(total, np.int64), np.asarray(count, np.int64)
    half = count // 2
    num = np.where(total > 0, total + half, total - half)
    return np.where(num >= 0, num // count, -((-num) // count))


def mean_multiplier(inp: Quant, out: Quant, count: int) -> tuple[int, int]:
    """MEAN's (multiplier, shift): QuantizeMultiplier(s_in / s_out) in Prepare; at Eval
    (QuantizedMeanOrSum) the 1/count is folded in as (multiplier << k) / count with
    k = floor(log2 count), capped at 32 and at 31 + shift, and shift - k."""
    multiplier, shift = quantize_multiplier(float(inp.s) / float(out.s))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << k) // count, shift - k


def mean(x, axes, keep_dims, inp: Quant, out: Quant, dtype):
    """MEAN over `axes`: the int32 sum minus count * input zero point, scaled by the
    folded multiplier, + output zero point, clamped to the dtype."""
    axes = tuple(sorted({a % x.ndim for a in axes}))
    count = int(np.prod([x.shape[a] for a in axes]))
    total = wrap32(np.asarray(x, np.int64).sum(axis=axes, keepdims=keep_dims))
    multiplier, shift = mean_multiplier(inp, out, count)
    shifted = wrap32(total - inp.zp * count)
    return clamp_cast(multiply_by_quantized_multiplier(shifted, multiplier, shift) + out.zp,
                      *dtype_range(dtype), dtype)


def requantize(x, inp: Quant, out: Quant, dtype):
    """QUANTIZE from int8/uint8 to int8/uint8: (x - zp_in) * QuantizeMultiplier(s_in / s_out)
    + zp_out, clamped. (The int8 <-> uint8 shift by 128 at equal scales is the same map.)"""
    multiplier, shift = quantize_multiplier(float(inp.s) / float(out.s))
    y = multiply_by_quantized_multiplier(np.asarray(x, np.int64) - inp.zp, multiplier, shift) + out.zp
    return clamp_cast(y, *dtype_range(dtype), dtype)


def quantize_float(x, out: Quant, dtype):
    """QUANTIZE from float32: round(x / scale) in float32, half away from zero, + zp."""
    q = round_half_away(np.asarray(x, np.float32) / out.s).astype(np.int64) + out.zp
    return clamp_cast(q, *dtype_range(dtype), dtype)


# -- softmax (reference_ops::Softmax for 8-bit, gemmlowp fixed point) ------------------------

SCALED_DIFF_INTEGER_BITS = 5  # the exp input is Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exps is Q12.19


@dataclass(frozen=True)
class SoftmaxParams:
    input_multiplier: int
    input_left_shift: int
    diff_min: int


def softmax_params(beta: float, inp: Quant) -> SoftmaxParams:
    """PreprocessSoftmaxScaling: beta * s_in * 2^(31 - 5), capped at 2^31 - 1, as a
    multiplier above one; diff_min = -floor((2^5 - 1) * 2^26 / 2^left_shift)
    (CalculateInputRadius): differences below it give exp = 0."""
    real = min(float(np.float32(beta)) * float(inp.s) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier_greater_than_one(real)
    radius = math.floor(((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS))
                        / (1 << left_shift))
    return SoftmaxParams(multiplier, left_shift, -radius)


def _srdhm(a, b):
    return saturating_rounding_doubling_high_mul(a, b)


def _saturating_left_shift(x, exponent):
    """SaturatingRoundingMultiplyByPOT with a positive exponent on int32."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, wrap32(x << exponent)))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    """exp(a) for a in [-1/4, 0), Q0.31: Taylor expansion around -1/8."""
    constant_term, one_third = 1895147668, 715827883  # exp(-1/8), 1/3 in Q0.31
    x = wrap32(a + (1 << 28))
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(wrap32(_srdhm(wrap32(x4_over_4 + x3), one_third) + x2), 1)
    return wrap32(constant_term + _srdhm(constant_term, wrap32(x + poly)))


def exp_on_negative_values(a, integer_bits=SCALED_DIFF_INTEGER_BITS):
    """gemmlowp exp_on_negative_values: a in Q(integer_bits) <= 0 -> exp(a) in Q0.31. The
    fraction modulo 1/4 by the Taylor series, then one multiplier per set bit of the rest
    (exp(-1/4), exp(-1/2), ... exp(-16))."""
    fractional_bits = 31 - integer_bits
    a = np.asarray(a, np.int64)
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = wrap32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _saturating_left_shift(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = wrap32(a_mod_quarter_minus_one_quarter - a)
    barrel = {-2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308, 2: 39332535, 3: 720401, 4: 242}
    for exponent, multiplier in barrel.items():
        if integer_bits > exponent:
            bit = 1 << (fractional_bits + exponent)
            result = np.where(remainder & bit, _srdhm(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _rounding_half_sum(a, b):
    s = np.asarray(a, np.int64) + b
    return trunc_div(s + np.where(s >= 0, 1, -1), 2)


def one_over_one_plus_x_for_x_in_0_1(a):
    """1 / (1 + a) for a in [0, 1) in Q0.31: three Newton-Raphson steps in Q2.29 from
    48/17 - 32/17 * d, d = (1 + a) / 2."""
    half_denominator = _rounding_half_sum(a, INT32_MAX)
    x = wrap32(1515870810 + _srdhm(half_denominator, -1010580540))
    one_q2 = 1 << 29
    for _ in range(3):
        one_minus = wrap32(one_q2 - _srdhm(half_denominator, x))
        x = wrap32(x + _saturating_left_shift(_srdhm(x, one_minus), 2))
    return _saturating_left_shift(x, 1)


def count_leading_zeros32(x):
    """Leading zero bits of x as a uint32; frexp of the float64 (exact below 2^53) gives
    the bit length."""
    x = np.asarray(x, np.int64) & 0xFFFFFFFF
    return 32 - np.frexp(x.astype(np.float64))[1].astype(np.int64)


def softmax(x, p: SoftmaxParams, dtype):
    """SOFTMAX over the last axis, 8-bit in, 8-bit out (output scale 1/256): exp of
    (x - max) * beta * s_in in Q5.26, summed in Q12.19, times the reciprocal of the sum
    (GetReciprocal), shifted to 8 bits, + the dtype's minimum."""
    x = np.asarray(x, np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    used = diff >= p.diff_min
    scaled = multiply_by_quantized_multiplier_greater_than_one(diff, p.input_multiplier, p.input_left_shift)
    exps = exp_on_negative_values(np.where(used, scaled, 0))
    exps_acc = rounding_divide_by_pot(exps, ACCUMULATION_INTEGER_BITS)  # Rescale Q0.31 -> Q12.19
    sum_of_exps = wrap32(np.where(used, exps_acc, 0).sum(axis=-1, keepdims=True))
    headroom_plus_one = count_leading_zeros32(sum_of_exps)
    num_bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one
    shifted_sum_minus_one = wrap32(((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    shifted_scale = one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one)
    exponent = num_bits_over_unit + 31 - 8 * np.dtype(dtype).itemsize
    if np.any((exponent < 0) | (exponent > 31)):
        raise ValueError("softmax reciprocal exponent out of [0, 31]")
    unsat = rounding_divide_by_pot(_srdhm(shifted_scale, exps), exponent)
    lo, hi = dtype_range(dtype)
    return np.where(used, np.clip(unsat + lo, lo, hi), lo).astype(dtype)


# -- the graph runner --------------------------------------------------------------------------

TENSOR_DTYPES = {2: np.int32, 3: np.uint8, 9: np.int8, 0: np.float32}  # TensorType codes


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: type
    quant: Quant | None
    data: np.ndarray | None  # constants only


@dataclass
class Op:
    code: int
    inputs: list[int]
    outputs: list[int]
    options: object  # the `tflite` package's options table, or None


def read_model(path) -> tuple[list[Tensor], list[Op], list[int], list[int]]:
    """(tensors, operators in execution order, graph inputs, graph outputs) of subgraph 0
    of a .tflite file (a path, or its bytes)."""
    import tflite  # the flatbuffer schema, pure Python

    buf = path if isinstance(path, bytes) else Path(path).read_bytes()
    model = tflite.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        if t.Type() not in TENSOR_DTYPES:
            raise UnsupportedModelError(f"tensor {i} has TensorType {t.Type()}")
        dtype = TENSOR_DTYPES[t.Type()]
        q = t.Quantization()
        quant = None
        if q is not None and q.ScaleLength() > 0:
            quant = Quant.of(q.ScaleAsNumpy(), q.ZeroPointAsNumpy(), q.QuantizedDimension())
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        raw = model.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() > 0 else 0
        data = None
        if not isinstance(raw, int) and raw.size:
            data = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        tensors.append(Tensor(t.Name().decode(), shape, dtype, quant, data))

    options_class = {tflite.BuiltinOperator.CONV_2D: tflite.Conv2DOptions,
                     tflite.BuiltinOperator.DEPTHWISE_CONV_2D: tflite.DepthwiseConv2DOptions,
                     tflite.BuiltinOperator.AVERAGE_POOL_2D: tflite.Pool2DOptions,
                     tflite.BuiltinOperator.ADD: tflite.AddOptions,
                     tflite.BuiltinOperator.MEAN: tflite.ReducerOptions,
                     tflite.BuiltinOperator.SOFTMAX: tflite.SoftmaxOptions,
                     tflite.BuiltinOperator.FULLY_CONNECTED: tflite.FullyConnectedOptions}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        oc = model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        options = None
        table = op.BuiltinOptions()
        if table is not None and code in options_class:
            options = options_class[code]()
            options.Init(table.Bytes, table.Pos)
        ops.append(Op(code, [int(v) for v in op.InputsAsNumpy()], [int(v) for v in op.OutputsAsNumpy()], options))
    return tensors, ops, [int(v) for v in graph.InputsAsNumpy()], [int(v) for v in graph.OutputsAsNumpy()]


def run(path, inputs) -> dict[int, np.ndarray]:
    """Every tensor of a .tflite file (path or bytes) after one forward pass, by tensor
    index: constants as stored, the graph input(s) as given (`inputs`: one array or a
    list), and each operator's output."""
    tensors, ops, graph_inputs, _ = read_model(path)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    values = {i: t.data for i, t in enumerate(tensors) if t.data is not None}
    for index, x in zip(graph_inputs, inputs, strict=True):
        if x.dtype != tensors[index].dtype:
            raise UnsupportedModelError(f"input {index} is {tensors[index].dtype.__name__}, got {x.dtype}")
        values[index] = x
    for op in ops:
        out = tensors[op.outputs[0]]
        values[op.outputs[0]] = evaluate(op, [values.get(i) for i in op.inputs],
                                         [tensors[i] if i >= 0 else None for i in op.inputs], out)
    return values


def evaluate(op: Op, args: list, ins: list[Tensor], out: Tensor) -> np.ndarray:
    """One operator: its Prepare (multipliers from the scales) and its Eval."""
    import tflite

    B = tflite.BuiltinOperator
    o = op.options
    if op.code in (B.CONV_2D, B.DEPTHWISE_CONV_2D):
        x, w, bias = args[0], args[1], args[2] if len(args) > 2 else None
        channels = w.shape[0] if op.code == B.CONV_2D else w.shape[3]
        multiplier, shift = conv_multipliers(ins[0].quant, ins[1].quant, out.quant, channels, out.dtype)
        lo, hi = activation_range(o.FusedActivationFunction(), out.quant, out.dtype)
        common = dict(stride=(o.StrideH(), o.StrideW()), dilation=(o.DilationHFactor(), o.DilationWFactor()),
                      padding=o.Padding(), dtype=out.dtype)
        # int8 filters are symmetric: the per-channel kernels ignore their zero point
        w_zp = ins[1].quant.zp if out.dtype == np.uint8 else 0
        if op.code == B.CONV_2D:
            return conv2d(x, ins[0].quant.zp, w, w_zp, bias, multiplier, shift, out.quant.zp, lo, hi, **common)
        return depthwise_conv2d(x, ins[0].quant.zp, w, w_zp, bias, multiplier, shift, out.quant.zp, lo, hi,
                                depth_multiplier=o.DepthMultiplier(), **common)
    if op.code == B.FULLY_CONNECTED:
        x, w, bias = args[0], args[1], args[2] if len(args) > 2 and args[2] is not None else None
        scales = fully_connected_scales(ins[0].quant, ins[1].quant, out.quant, w.shape[0])
        lo, hi = activation_range(o.FusedActivationFunction(), out.quant, out.dtype)
        # per-channel int8 weights are symmetric: their zero point is not read
        w_zp = ins[1].quant.zp if len(ins[1].quant.scale) == 1 else 0
        y = fully_connected(x.reshape(-1, w.shape[1]), ins[0].quant.zp, w, w_zp, bias,
                            scales, out.quant.zp, lo, hi, dtype=out.dtype)
        return y.reshape(out.shape)
    if op.code == B.ADD:
        lo, hi = activation_range(o.FusedActivationFunction(), out.quant, out.dtype)
        p = add_params(ins[0].quant, ins[1].quant, out.quant)
        return add(args[0], ins[0].quant.zp, args[1], ins[1].quant.zp, p, out.quant.zp, lo, hi, dtype=out.dtype)
    if op.code == B.AVERAGE_POOL_2D:
        lo, hi = activation_range(o.FusedActivationFunction(), out.quant, out.dtype)
        return average_pool2d(args[0], o.FilterHeight(), o.FilterWidth(), (o.StrideH(), o.StrideW()),
                              o.Padding(), lo, hi, out.dtype)
    if op.code == B.MEAN:
        return mean(args[0], [int(a) for a in np.ravel(args[1])], bool(o.KeepDims()), ins[0].quant, out.quant,
                    out.dtype)
    if op.code == B.RESHAPE:
        return args[0].reshape(out.shape)
    if op.code == B.SOFTMAX:
        return softmax(args[0], softmax_params(o.Beta(), ins[0].quant), out.dtype)
    if op.code == B.QUANTIZE:
        if ins[0].dtype == np.float32:
            return quantize_float(args[0], out.quant, out.dtype)
        return requantize(args[0], ins[0].quant, out.quant, out.dtype)
    raise UnsupportedModelError(f"operator code {op.code} is not implemented by this reference")
