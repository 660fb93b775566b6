"""The int8 kernels other than the 1x1 convs (kernels/qdepthwise.py, qconv.py, qops.py,
qsoftmax.py) against tests/tflite_int.py, the NumPy reference of TFLite's integer kernels:
byte for byte, in the int8 file's convention (per-channel weights, w_zero 0) and the uint8
file's run in the int8 domain (every activation, zero point and bound shifted by -128)."""
import os
import platform

import numpy as np
import pytest
from numba import njit

from mnv2engine.kernels.qconv import pack_qconv3x3, qconv3x3, qconv3x3_row
from mnv2engine.kernels.qdepthwise import pack_qdepthwise, qdepthwise3x3, qdepthwise_row
from mnv2engine.kernels.qlanes import requantize_lanes
from mnv2engine.kernels.qops import qadd, qaverage, qmean, qrequantize
from mnv2engine.kernels.qsimd import LANES, bstore, iload, vrequant32
from mnv2engine.kernels.qsoftmax import qsoftmax
from mnv2engine.quantized import add_params, mean_params, softmax_params

import rebuilds
import tflite_int as ref

CHANNELS = [1, 8, 16, 24, 96, 144]
WIDTHS = [1, 2, 7, 15, 112]


def _values(rng, shape, dtype, zero):
    """Random 8-bit values, a third of them at the two ends of the range and at the zero point."""
    lo, hi = ref.dtype_range(dtype)
    v = rng.integers(lo, hi, shape, endpoint=True)
    pick = rng.random(shape)
    v = np.where(pick < 0.1, lo, np.where(pick < 0.2, hi, np.where(pick < 0.3, zero, v)))
    return v.astype(dtype)


def _zero_point(rng, dtype):
    lo, hi = ref.dtype_range(dtype)
    return int(rng.choice([lo, hi, lo + 1, hi - 1, int(rng.integers(lo, hi + 1))]))


def _bounds(rng, dtype, zero):
    """Clamp bounds: the dtype's range, or a ReLU6-like range around the zero point, so
    that outputs saturate at either end."""
    lo, hi = ref.dtype_range(dtype)
    if rng.random() < 0.4:
        return lo, hi
    a = int(np.clip(zero + rng.integers(-20, 5), lo, hi))
    return a, int(np.clip(a + rng.integers(5, 120), a, hi))


def _conv_case(rng, dtype, w_shape, channels):
    """(x zero, w zero, kernel weights, bias, multipliers, shifts, y zero, lo, hi), TFLite's
    way: per channel for int8 (symmetric weights), per tensor for uint8."""
    x_zero, y_zero = _zero_point(rng, dtype), _zero_point(rng, dtype)
    w_zero = 0 if dtype == np.int8 else _zero_point(rng, dtype)
    w = _values(rng, w_shape, dtype, w_zero)
    s_x = np.float32(rng.uniform(0.005, 0.05))
    s_w = rng.uniform(0.002, 0.05, channels if dtype == np.int8 else 1).astype(np.float32)
    s_y = np.float32(rng.uniform(0.002, 0.2))  # small: many outputs saturate
    mult, shift = ref.conv_multipliers(ref.Quant.of(s_x, x_zero), ref.Quant.of(s_w, w_zero if dtype == np.uint8 else 0),
                                       ref.Quant.of(s_y, y_zero), channels, dtype)
    bias = rng.integers(-20000, 20000, channels)
    lo, hi = _bounds(rng, dtype, y_zero)
    return x_zero, w_zero, w, bias, mult, shift, y_zero, lo, hi


def _to_int8(values, dtype):
    """A uint8 file's arrays and integers in the int8 domain: minus 128."""
    if dtype == np.int8:
        return values
    if isinstance(values, np.ndarray):
        return (values.astype(np.int16) - 128).astype(np.int8)
    return values - 128


def _to_file(out, dtype):
    return out if dtype == np.int8 else (out.astype(np.int16) + 128).astype(np.uint8)


def _i32(a):
    return np.ascontiguousarray(a, np.int32)


def _depthwise_case(rng, H, W, C, stride, dtype):
    x_zero, w_zero, w, bias, mult, shift, y_zero, lo, hi = _conv_case(rng, dtype, (3, 3, C), C)
    x = _values(rng, (H, W, C), dtype, x_zero)
    want = ref.depthwise_conv2d(x[None], x_zero, w[None], w_zero, bias, mult, shift, y_zero, lo, hi,
                                stride=(stride, stride), dtype=dtype)[0]
    Ho, top = ref.out_size_and_pad(H, 3, stride, 1, ref.SAME)
    Wo, left = ref.out_size_and_pad(W, 3, stride, 1, ref.SAME)
    d = lambda v: _to_int8(v, dtype)  # noqa: E731
    wc = pack_qdepthwise(d(w), d(w_zero))
    args = (wc, _i32(bias), _i32(mult), _i32(shift), d(x_zero), d(y_zero), d(lo), d(hi), stride, top, left)
    return d(x), args, want, (Ho, Wo, C)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", CHANNELS)
def test_depthwise_is_tflites(C, stride, dtype):
    rng = np.random.default_rng([C, stride, int(dtype == np.uint8)])
    for W in WIDTHS:
        H = int(rng.integers(1, 5 if W == 112 else 8))
        x, args, want, shape = _depthwise_case(rng, H, W, C, stride, dtype)
        out = np.empty(shape, np.int8)
        qdepthwise3x3(x, *args, out)
        assert np.array_equal(_to_file(out, dtype), want), f"H={H} W={W}"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_rows_from_a_three_row_line_buffer(stride, dtype):
    rng = np.random.default_rng([7, stride])
    for H, W, C in [(1, 7, 8), (2, 15, 24), (5, 2, 16), (6, 112, 1), (7, 7, 144)]:
        x, args, want, shape = _depthwise_case(rng, H, W, C, stride, dtype)
        top = args[-2]
        ring = np.full((3, W, C), 99, np.int8)  # rows not yet written hold junk
        out = np.empty(shape, np.int8)
        for oy in range(shape[0]):
            for iy in range(oy * stride - top, oy * stride - top + 3):
                if 0 <= iy < H:
                    ring[iy % 3] = x[iy]
            qdepthwise_row(ring, H, oy, *args, out[oy])
        assert np.array_equal(_to_file(out, dtype), want), f"H={H} W={W} C={C}"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("stride", [1, 2])
def test_stem_is_tflites(stride, dtype):
    rng = np.random.default_rng([11, stride, int(dtype == np.uint8)])
    for C in [1, 8, 16, 24, 32]:
        for W in WIDTHS:
            H = int(rng.integers(1, 4 if W == 112 else 8))
            x_zero, w_zero, w, bias, mult, shift, y_zero, lo, hi = _conv_case(rng, dtype, (3, 3, 3, C), C)
            x = _values(rng, (H, W, 3), dtype, x_zero)
            want = ref.conv2d(x[None], x_zero, w.transpose(3, 0, 1, 2), w_zero, bias, mult, shift, y_zero, lo, hi,
                              stride=(stride, stride), dtype=dtype)[0]
            Ho, top = ref.out_size_and_pad(H, 3, stride, 1, ref.SAME)
            Wo, left = ref.out_size_and_pad(W, 3, stride, 1, ref.SAME)
            d = lambda v: _to_int8(v, dtype)  # noqa: E731
            args = (pack_qconv3x3(d(w), d(w_zero)), _i32(bias), _i32(mult), _i32(shift), d(x_zero), d(y_zero),
                    d(lo), d(hi), stride, top, left)
            out = np.empty((Ho, Wo, C), np.int8)
            qconv3x3(d(x), *args, out)
            assert np.array_equal(_to_file(out, dtype), want), f"H={H} W={W} C={C}"
            row = np.empty((Wo, C), np.int8)
            qconv3x3_row(d(x), Ho - 1, *args, row)
            assert np.array_equal(row, out[-1])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_add_is_tflites(dtype):
    rng = np.random.default_rng([13, int(dtype == np.uint8)])
    for C in CHANNELS:
        P = int(rng.integers(1, 60))
        za, zb, zy = (_zero_point(rng, dtype) for _ in range(3))
        sa, sb, sy = (np.float32(rng.uniform(0.01, 0.3)) for _ in range(3))
        if rng.random() < 0.3:
            sy = np.float32(sa / 20)  # most sums saturate
        a, b = _values(rng, (P, C), dtype, za), _values(rng, (P, C), dtype, zb)
        lo, hi = _bounds(rng, dtype, zy)
        q = ref.Quant.of
        want = ref.add(a, za, b, zb, ref.add_params(q(sa, za), q(sb, zb), q(sy, zy)), zy, lo, hi, dtype)
        d = lambda v: _to_int8(v, dtype)  # noqa: E731
        p = add_params(sa, d(za), sb, d(zb), sy, d(zy))
        out = np.empty((P, C), np.int8)
        qadd(d(a), *p[:3], d(b), *p[3:], d(lo), d(hi), out)
        assert np.array_equal(_to_file(out, dtype), want), f"P={P} C={C}"


def test_add_params_are_tflites_prepare():
    q = ref.Quant.of
    for sa, sb, sy in [(0.1, 0.2, 0.3), (0.02, 0.02, 0.01), (1e-3, 0.5, 0.2)]:
        r = ref.add_params(q(sa, 0), q(sb, 0), q(sy, 0))
        p = add_params(sa, 1, sb, 2, sy, 3)
        assert (p.a_mult, p.a_shift, p.b_mult, p.b_shift, p.y_mult, p.y_shift) == (*r.input1, *r.input2, *r.output)
        assert (p.a_zero, p.b_zero, p.y_zero) == (1, 2, 3)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_mean_is_tflites(dtype):
    rng = np.random.default_rng([17, int(dtype == np.uint8)])
    for C in CHANNELS:
        for H, W in [(1, 1), (7, 7), (2, 3), (4, 4), (10, 13)]:
            zx, zy = _zero_point(rng, dtype), _zero_point(rng, dtype)
            sx = np.float32(rng.uniform(0.01, 0.2))
            sy = np.float32(sx * rng.choice([0.05, 0.7, 1.0, 3.0]))
            x = _values(rng, (1, H, W, C), dtype, zx)
            want = ref.mean(x, [1, 2], False, ref.Quant.of(sx, zx), ref.Quant.of(sy, zy), dtype)[0]
            mult, shift = mean_params(sx, sy, H * W)
            lo, hi = ref.dtype_range(dtype)
            d = lambda v: _to_int8(v, dtype)  # noqa: E731
            out = np.empty(C, np.int8)
            qmean(d(x).reshape(H * W, C), d(zx), mult, shift, d(zy), d(lo), d(hi), out)
            assert np.array_equal(_to_file(out, dtype), want), f"{H}x{W}x{C}"


def test_the_sliced_projections_requantization_is_tflites():
    """qrequantize: int32 sums added up in parts, + bias, requantized per channel (a conv's
    end in TFLite's reference kernels), at the int32 edges and for partial vectors."""
    rng = np.random.default_rng(23)
    for P, C in [(1, 1), (5, 24), (13, 144), (49, 320)]:
        acc = rng.integers(-(1 << 31), 1 << 31, (P, C)).astype(np.int32)
        acc[:, ::3] = rng.integers(-40000, 40000, (P, len(range(0, C, 3))))
        bias = rng.integers(-(1 << 20), 1 << 20, C).astype(np.int32)
        mult = rng.integers(1 << 30, 1 << 31, C).astype(np.int32)
        shift = rng.integers(-20, 2, C).astype(np.int32)
        zero, lo, hi = int(rng.integers(-128, 128)), -128, int(rng.integers(0, 128))
        out = np.empty((P, C), np.int8)
        qrequantize(acc, bias, mult, shift, zero, lo, hi, out)
        want = ref.requantize_acc(acc.astype(np.int64), bias, mult, shift, zero, lo, hi, np.int8)
        assert np.array_equal(out, want), (P, C)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_global_average_pool_is_tflites(dtype):
    rng = np.random.default_rng([19, int(dtype == np.uint8)])
    for C in CHANNELS:
        for H, W in [(1, 1), (7, 7), (2, 3), (4, 4), (1, 2)]:
            x = _values(rng, (1, H, W, C), dtype, 0)
            if rng.random() < 0.3:  # sums near the rounding ties: values of one parity
                x = (x & ~np.array(1, dtype)).astype(dtype)
            lo, hi = _bounds(rng, dtype, ref.dtype_range(dtype)[0] + 60)
            want = ref.average_pool2d(x, H, W, (1, 1), ref.VALID, lo, hi, dtype)[0, 0, 0]
            d = lambda v: _to_int8(v, dtype)  # noqa: E731
            out = np.empty(C, np.int8)
            qaverage(d(x).reshape(H * W, C), d(lo), d(hi), out, dtype == np.uint8)
            assert np.array_equal(_to_file(out, dtype), want), f"{H}x{W}x{C}"


def test_average_rounds_ties_as_each_file_does():
    """A mean of -0.5: int8 rounds away from zero (-1); uint8's (sum + n/2) / n on the
    unshifted values rounds 127.5 up (128, i.e. 0 shifted)."""
    x = np.array([[-1], [0]], np.int8)
    out = np.empty(1, np.int8)
    qaverage(x, -128, 127, out, False)
    assert out[0] == -1
    qaverage(x, -128, 127, out, True)
    assert out[0] == 0


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_softmax_is_tflites(dtype):
    rng = np.random.default_rng([23, int(dtype == np.uint8)])
    # TFLite refuses rows whose exps sum to 512 or more: 1001 classes only at large scales
    for N, scale in [(1, 0.1), (2, 0.01), (10, 0.1), (500, 0.01), (500, 0.1), (1001, 0.25), (1001, 1.0)]:
        zx = _zero_point(rng, dtype)
        x = _values(rng, (3, N), dtype, zx)
        if N < 512:
            x[2] = x[2, 0]  # a row of equal logits
        p = softmax_params(1.0, scale)
        want = ref.softmax(x, ref.softmax_params(1.0, ref.Quant.of(scale, zx)), dtype)
        assert tuple(p) == tuple(vars(ref.softmax_params(1.0, ref.Quant.of(scale, zx))).values())
        out = np.empty(x.shape, np.int8)
        qsoftmax(_to_int8(x, dtype), *p, out)
        assert np.array_equal(_to_file(out, dtype), want), f"N={N} scale={scale}"


def test_params_refuse_impossible_scales():
    with pytest.raises(ValueError, match="scale"):
        add_params(0.0, 0, 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="scale"):
        mean_params(float("nan"), 0.1, 49)
    with pytest.raises(ValueError, match="a mean over 0"):
        mean_params(0.1, 0.1, 0)
    with pytest.raises(ValueError, match="not above 1"):
        softmax_params(1e-12, 1e-3)


# A few of these tests again, compiled for AVX2, whose vector code (int32 lanes split into
# ymm registers) the native AVX-512 run never takes; the portable path: .ci/arm (aarch64)
HASWELL_RUN = platform.machine() in ("x86_64", "AMD64") and os.environ.get("NUMBA_CPU_NAME") is None
CHOSEN = ["test_depthwise_is_tflites and (144-1-int8 or 24-2-uint8 or 1-2-int8)", "test_depthwise_rows",
          "test_stem_is_tflites and 2-int8", "test_add_is_tflites", "test_the_int32_vector", "test_mean",
          "test_softmax_is_tflites"]
if HASWELL_RUN:
    rebuilds.declare("qops haswell", {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": None}, ["test_qops.py"],
                     "-k", " or ".join(f"({k})" for k in CHOSEN))


@pytest.mark.slow
@pytest.mark.rebuild("qops haswell")
def test_compiled_for_avx2():
    if not HASWELL_RUN:
        pytest.skip("this run is for a chosen target, or the machine is not x86-64")
    rebuilds.check("qops haswell", "tests compiled for haswell")


@njit(cache=True)
def _requantize_lanes_all(acc, mult, shift, out):
    for i in range(acc.size):
        out[i] = requantize_lanes(acc[i], mult[i], shift[i])


def test_the_lane_requantization_is_tflites():
    """kernels/qlanes.py's rewriting of MultiplyByQuantizedMultiplier, at the int32 edges
    (INT32_MIN squared saturates) and at random."""
    rng = np.random.default_rng(29)
    n = 30000
    acc = rng.integers(-(1 << 31), 1 << 31, n)
    acc[n // 2:] = rng.integers(-5000, 5000, n - n // 2)
    mult = rng.integers(1 << 30, 1 << 31, n)
    shift = rng.integers(-31, 8, n)
    acc[:4], mult[:4], shift[:4] = -(1 << 31), -(1 << 31), [0, -1, 0, -31]
    out = np.empty(n, np.int32)
    _requantize_lanes_all(acc.astype(np.int32), mult.astype(np.int32), shift.astype(np.int32), out)
    assert np.array_equal(out, ref.multiply_by_quantized_multiplier(acc, mult, shift))


@njit(cache=True)
def _vrequant32_all(acc, mult, shift, zero, lo, hi, out):
    for i in range(0, acc.size, LANES):
        n = min(LANES, acc.size - i)
        bstore(out, (i,), n, vrequant32(iload(acc, (i,), n), iload(mult, (i,), n), iload(shift, (i,), n),
                                        zero, lo, hi))


def test_the_int32_vector_requantization_is_tflites():
    """qsimd.vrequant32 (the stem's) at the int32 edges (INT32_MIN
    squared saturates, shifts 0 and 31 either way) and at random, with the zero point and clamp."""
    rng = np.random.default_rng(31)
    n = 30001  # not a multiple of 16: a partial vector too
    acc = rng.integers(-(1 << 31), 1 << 31, n)
    acc[n // 2:] = rng.integers(-300000, 300000, n - n // 2)
    mult = rng.integers(1 << 30, 1 << 31, n)
    mult[::7] = rng.integers(-(1 << 31), 1 << 31, len(mult[::7]))
    shift = rng.integers(-31, 8, n)
    shift[::5] = rng.choice([-31, -1, 0, 1, 31], len(shift[::5]))
    acc[:6], mult[:6], shift[:6] = -(1 << 31), -(1 << 31), [0, -1, 0, -31, 1, -12]
    for zero, lo, hi in [(0, -128, 127), (-128, -128, 127), (127, -20, 100), (5, 0, 0)]:
        out = np.empty(n, np.int8)
        _vrequant32_all(acc.astype(np.int32), mult.astype(np.int32), shift.astype(np.int32), zero, lo, hi, out)
        want = np.clip(ref.multiply_by_quantized_multiplier(acc, mult, shift) + zero, lo, hi)
        assert np.array_equal(out, want), (zero, lo, hi)
