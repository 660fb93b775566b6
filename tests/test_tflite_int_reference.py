"""tests/tflite_int.py, the NumPy version of TFLite's integer arithmetic, proved against
LiteRT's reference kernels (OpResolverType.BUILTIN_REF) byte for byte:

- its fixed-point primitives against scalar Python-int versions written here from the
  C++ (gemmlowp fixedpoint.h, kernels/internal/common.cc, quantization_util.cc), on the
  edge cases and on random values;
- each operator on tiny single-op .tflite files built here with the schema's object API,
  random shapes and quantization, zero points at the ends of their range;
- every tensor of the two quantized MobileNetV2s of shared/data, on photos and on random
  inputs.
"""
import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import tflite_int as ti
from conftest import require

flatbuffers = require("flatbuffers")
schema = require("ai_edge_litert.schema_py_generated")
require("tflite")
OP, TT, BO = schema.BuiltinOperator, schema.TensorType, schema.BuiltinOptions

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MODELS = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")


# -- scalar versions of the C++, one value at a time, in Python ints ----------------------------

def c_div(a: int, b: int) -> int:
    """C++ integer division: the quotient rounded toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def py_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def py_rounding_divide_by_pot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def to_int32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def py_multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return py_rounding_divide_by_pot(py_srdhm(to_int32(x * (1 << left)), multiplier), right)


def py_quantize_multiplier(real: float) -> tuple[int, int]:
    """From the definition, in exact rationals: real = q * 2^shift, q in [1/2, 1), q * 2^31
    rounded half away from zero; 2^31 after rounding -> 2^30 with shift + 1; shifts below
    -31 flush to (0, 0)."""
    if real == 0:
        return 0, 0
    r = Fraction(real)
    shift = 0
    while abs(r) / 2 ** shift >= 1:
        shift += 1
    while abs(r) / 2 ** shift < Fraction(1, 2):
        shift -= 1
    scaled = abs(r) / 2 ** shift * 2 ** 31
    q = int(scaled + Fraction(1, 2)) * (1 if real > 0 else -1)
    if q == 1 << 31:
        q, shift = q // 2, shift + 1
    if shift < -31:
        return 0, 0
    return q, shift


# -- fixed-point primitives --------------------------------------------------------------

def test_doubling_high_mul_saturates_only_at_int32_min_squared():
    assert int(ti.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    for a, b in [(INT32_MIN, INT32_MAX), (INT32_MAX, INT32_MIN), (INT32_MAX, INT32_MAX), (INT32_MIN, 1),
                 (-1, 1 << 30), (1, 1 << 30), (-3, 1 << 30), (3, 1 << 30), (0, INT32_MIN)]:
        assert int(ti.saturating_rounding_doubling_high_mul(a, b)) == py_srdhm(a, b), (a, b)


def test_rounding_divide_by_pot_rounds_ties_away_from_zero():
    cases = [(x, e) for x in (-5, -4, -3, -2, -1, 0, 1, 2, 3, 5, INT32_MIN, INT32_MAX, INT32_MIN + 1)
             for e in (0, 1, 2, 30, 31)]
    for x, e in cases:
        assert int(ti.rounding_divide_by_pot(x, e)) == py_rounding_divide_by_pot(x, e), (x, e)
    assert int(ti.rounding_divide_by_pot(-3, 1)) == -2 and int(ti.rounding_divide_by_pot(3, 1)) == 2
    assert int(ti.rounding_divide_by_pot(-5, 2)) == -1  # -1.25


def test_fixed_point_primitives_match_python_ints_on_random_values():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
                        rng.integers(-300, 300, 1000), [INT32_MIN, INT32_MAX, 0, -1, 1]])
    b = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
                        rng.integers(1 << 30, INT32_MAX, 1000), [INT32_MIN, INT32_MIN, 0, 1 << 30, INT32_MAX]])
    e = rng.integers(0, 32, a.size)
    got = ti.saturating_rounding_doubling_high_mul(a, b)
    assert [int(v) for v in got] == [py_srdhm(int(x), int(y)) for x, y in zip(a, b)]
    got = ti.rounding_divide_by_pot(a, e)
    assert [int(v) for v in got] == [py_rounding_divide_by_pot(int(x), int(s)) for x, s in zip(a, e)]
    multiplier = rng.integers(1 << 30, INT32_MAX, a.size, endpoint=True)
    shift = rng.integers(-31, 8, a.size)
    x = np.where(shift > 0, a >> 8, a)  # C's contract: x << shift fits in int32
    got = ti.multiply_by_quantized_multiplier(x, multiplier, shift)
    assert [int(v) for v in got] == [py_multiply_by_quantized_multiplier(int(v), int(m), int(s))
                                     for v, m, s in zip(x, multiplier, shift)]


@pytest.mark.parametrize("shift", [0, -1, -31, 1, 7])
def test_multiply_by_quantized_multiplier_at_the_shift_ends(shift):
    for x in (INT32_MIN >> 8, -12345, -1, 0, 1, 12345, INT32_MAX >> 8):
        for m in (1 << 30, INT32_MAX, (1 << 30) + 1):
            assert int(ti.multiply_by_quantized_multiplier(x, m, shift)) == \
                py_multiply_by_quantized_multiplier(x, m, shift), (x, m, shift)


@pytest.mark.parametrize("real", [
    1.0, 0.5, 0.25, 2.0, 3.0, 0.75, 1.0 - 2 ** -33, 1.0 - 2 ** -31, 1.0 + 2 ** -40, 0.5 - 2 ** -40,
    2 ** -31, 2 ** -32, 2 ** -33, 1e-12, 0.999999999, 0.0, 0.0078125, 0.0235294122248888,
    1 / 3, 2 / 3, 123.456, 1e-9 * 3])
def test_quantize_multiplier_matches_the_definition(real):
    assert ti.quantize_multiplier(real) == py_quantize_multiplier(real)


def test_quantize_multiplier_rounds_up_to_one_and_renormalizes():
    # 1 - 2^-33 rounds to 2^31 in Q0.31: TFLite halves it and raises the shift
    assert ti.quantize_multiplier(1.0 - 2 ** -33) == (1 << 30, 1)
    assert ti.quantize_multiplier(2 ** -33) == (0, 0)  # below 2^-32: flushed to zero
    assert ti.quantize_multiplier(2 ** -32) == (1 << 30, -31)


def test_quantize_multiplier_matches_the_definition_on_random_scales():
    rng = np.random.default_rng(2)
    reals = np.float32(rng.uniform(1e-5, 1e-1, 300)) * np.float32(rng.uniform(1e-3, 1, 300)) / np.float32(
        rng.uniform(1e-3, 1, 300))
    for r in reals:
        assert ti.quantize_multiplier(float(r)) == py_quantize_multiplier(float(r))


# -- single-op models, run by LiteRT's reference kernels and by tflite_int --------------------

INT8, UINT8 = np.int8, np.uint8
TENSOR_TYPE = {np.int8: TT.INT8, np.uint8: TT.UINT8, np.int32: TT.INT32, np.float32: TT.FLOAT32}


class Builder:
    """One operator's model: tensors added one by one, constants with their data."""

    def __init__(self):
        self.model = schema.ModelT()
        self.model.version = 3
        self.model.buffers = [schema.BufferT()]
        self.tensors = []

    def tensor(self, shape, dtype, scale=None, zero_point=None, axis=0, data=None) -> int:
        t = schema.TensorT()
        t.name = f"t{len(self.tensors)}".encode()
        t.shape = np.array(shape, np.int32)
        t.type = TENSOR_TYPE[dtype]
        t.buffer = 0
        if scale is not None:
            q = schema.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(np.float32(scale))]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zero_point)]
            q.quantizedDimension = axis
            t.quantization = q
        if data is not None:
            b = schema.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.model.buffers.append(b)
            t.buffer = len(self.model.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def build(self, code, inputs, outputs, options_type=0, options=None, version=1) -> bytes:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        op = schema.OperatorT()
        op.opcodeIndex = 0
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        sg = schema.SubGraphT()
        sg.tensors, sg.operators = self.tensors, [op]
        sg.inputs = np.array([i for i in inputs if i >= 0 and self.model.buffers[self.tensors[i].buffer].data is None],
                             np.int32)
        sg.outputs = np.array(outputs, np.int32)
        self.model.operatorCodes, self.model.subgraphs = [oc], [sg]
        b = flatbuffers.Builder(1 << 16)
        b.Finish(self.model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def litert_ref(content: bytes, inputs):
    """LiteRT's reference kernels on `content`: (interpreter after invoke, tensor details)."""
    lite = require("ai_edge_litert.interpreter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = lite.Interpreter(model_content=content, experimental_op_resolver_type=lite.OpResolverType.BUILTIN_REF,
                              experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    for detail, x in zip(it.get_input_details(), inputs, strict=True):
        it.set_tensor(detail["index"], x)
    it.invoke()
    return it


def assert_same_output(content: bytes, inputs):
    it = litert_ref(content, inputs)
    ours = ti.run(content, inputs)
    out = it.get_output_details()[0]["index"]
    ref = it.get_tensor(out)
    got = ours[out]
    assert got.dtype == ref.dtype and got.shape == ref.shape, (got.dtype, got.shape, ref.dtype, ref.shape)
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert not diff.any(), f"{int((diff > 0).sum())} of {diff.size} values differ, by up to {int(diff.max())}"
    return ref


def random_q(rng, dtype, extreme=None):
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    zp = extreme if extreme is not None else int(rng.integers(lo, hi, endpoint=True))
    return float(np.float32(rng.uniform(0.005, 0.1))), zp


def random_values(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def extreme_zero_point(seed, dtype):
    """Half the seeds take a zero point at an end of the dtype's range, in turn."""
    info = np.iinfo(dtype)
    return [None, int(info.min), None, int(info.max)][seed % 4]


SEEDS = range(8)
DTYPES = [INT8, UINT8]
ACTIVATIONS = [ti.ACT_NONE, ti.ACT_RELU6, ti.ACT_RELU]


def conv_case(rng, seed, dtype, depthwise):
    """Random shapes, strides, padding, dilation and quantization of a (depthwise) conv."""
    N, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 10)), int(rng.integers(1, 10))
    Cin = int(rng.integers(1, 9))
    mult = int(rng.integers(1, 3)) if depthwise else 1
    Cout = Cin * mult if depthwise else int(rng.integers(1, 9))
    KH, KW = int(rng.choice([1, 2, 3])), int(rng.choice([1, 3]))
    stride = int(rng.integers(1, 3))
    dilation = int(rng.choice([1, 1, 2]))
    padding = int(rng.integers(0, 2))
    if padding == ti.VALID:
        H, W = max(H, (KH - 1) * dilation + 1), max(W, (KW - 1) * dilation + 1)
    in_scale, in_zp = random_q(rng, dtype, extreme_zero_point(seed, dtype))
    out_zp = random_q(rng, dtype, extreme_zero_point(seed + 1, dtype))[1]
    K = KH * KW * (1 if depthwise else Cin)
    if dtype == INT8:
        w_scale = np.float32(rng.uniform(0.002, 0.05, Cout))
        w_zp = np.zeros(Cout, np.int64)
    else:
        w_scale = np.float32([rng.uniform(0.002, 0.05)])
        w_zp = np.array([int(rng.integers(0, 256))])
    out_scale = float(np.float32(in_scale * float(w_scale.max()) * 128 * np.sqrt(K) * rng.uniform(0.3, 3)))
    wshape = (1, KH, KW, Cout) if depthwise else (Cout, KH, KW, Cin)
    w = random_values(rng, wshape, dtype)
    if dtype == INT8:
        w = np.maximum(w, -127).astype(INT8)  # TFLite's int8 weights are symmetric
    bias = rng.integers(-(1 << 14), 1 << 14, Cout).astype(np.int32)
    b = Builder()
    x = b.tensor((N, H, W, Cin), dtype, in_scale, in_zp)
    wt = b.tensor(wshape, dtype, w_scale, w_zp, axis=3 if depthwise else 0, data=w)
    bias_scale = np.float32(in_scale) * w_scale
    bt = b.tensor((Cout,), np.int32, bias_scale, np.zeros(len(bias_scale), np.int64), data=bias)
    Ho, _ = ti.out_size_and_pad(H, KH, stride, dilation, padding)
    Wo, _ = ti.out_size_and_pad(W, KW, stride, dilation, padding)
    y = b.tensor((N, Ho, Wo, Cout), dtype, out_scale, out_zp)
    activation = ACTIVATIONS[seed % 3]
    if depthwise:
        o = schema.DepthwiseConv2DOptionsT()
        o.depthMultiplier = mult
        options_type = BO.DepthwiseConv2DOptions
    else:
        o = schema.Conv2DOptionsT()
        options_type = BO.Conv2DOptions
    o.padding, o.strideH, o.strideW = padding, stride, stride
    o.dilationHFactor = o.dilationWFactor = dilation
    o.fusedActivationFunction = activation
    version = 3 if dtype == INT8 else (2 if dilation > 1 and depthwise else 1)
    content = b.build(OP.DEPTHWISE_CONV_2D if depthwise else OP.CONV_2D, [x, wt, bt], [y], options_type, o, version)
    return content, [random_values(rng, (N, H, W, Cin), dtype)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(100 + seed)
    assert_same_output(*conv_case(rng, seed, dtype, depthwise=False))


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_depthwise_conv2d_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(200 + seed)
    assert_same_output(*conv_case(rng, seed, dtype, depthwise=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_add_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(300 + seed)
    shape = tuple(int(v) for v in rng.integers(1, 7, 4))
    b = Builder()
    x1 = b.tensor(shape, dtype, *random_q(rng, dtype, extreme_zero_point(seed, dtype)))
    x2 = b.tensor(shape, dtype, *random_q(rng, dtype, extreme_zero_point(seed + 1, dtype)))
    y = b.tensor(shape, dtype, *random_q(rng, dtype, extreme_zero_point(seed + 2, dtype)))
    o = schema.AddOptionsT()
    o.fusedActivationFunction = ACTIVATIONS[seed % 3]
    content = b.build(OP.ADD, [x1, x2], [y], BO.AddOptions, o, version=2 if dtype == INT8 else 1)
    assert_same_output(content, [random_values(rng, shape, dtype), random_values(rng, shape, dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_average_pool_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(400 + seed)
    N, H, W, C = 1, int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 6))
    k, stride, padding = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    if padding == ti.VALID:
        H, W = max(H, k), max(W, k)
    scale, zp = random_q(rng, dtype, extreme_zero_point(seed, dtype))
    b = Builder()
    x = b.tensor((N, H, W, C), dtype, scale, zp)
    Ho, _ = ti.out_size_and_pad(H, k, stride, 1, padding)
    Wo, _ = ti.out_size_and_pad(W, k, stride, 1, padding)
    y = b.tensor((N, Ho, Wo, C), dtype, scale, zp)
    o = schema.Pool2DOptionsT()
    o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = padding, stride, stride, k, k
    o.fusedActivationFunction = ACTIVATIONS[seed % 3]
    content = b.build(OP.AVERAGE_POOL_2D, [x], [y], BO.Pool2DOptions, o, version=2 if dtype == INT8 else 1)
    assert_same_output(content, [random_values(rng, (N, H, W, C), dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_mean_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(500 + seed)
    N, H, W, C = int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12)), int(rng.integers(1, 9))
    in_scale, in_zp = random_q(rng, dtype, extreme_zero_point(seed, dtype))
    out_scale = float(np.float32(in_scale * rng.uniform(0.2, 3)))
    out_zp = random_q(rng, dtype, extreme_zero_point(seed + 1, dtype))[1]
    b = Builder()
    x = b.tensor((N, H, W, C), dtype, in_scale, in_zp)
    axes = b.tensor((2,), np.int32, data=np.array([1, 2], np.int32))
    y = b.tensor((N, 1, 1, C), dtype, out_scale, out_zp)
    o = schema.ReducerOptionsT()
    o.keepDims = True
    content = b.build(OP.MEAN, [x, axes], [y], BO.ReducerOptions, o, version=2 if dtype == INT8 else 1)
    assert_same_output(content, [random_values(rng, (N, H, W, C), dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(600 + seed)
    # a narrow spread (odd seeds) keeps the depth at most 256: at 512 and more classes near
    # the maximum the sum of the exps reaches 2^9 and TFLite's reference aborts (its
    # 0 <= exponent <= 31 check for an 8-bit output)
    narrow = seed % 2 == 1
    rows, depth = int(rng.integers(1, 4)), int(rng.choice([1, 2, 10, 256] if narrow else [1, 2, 10, 1001]))
    in_scale, in_zp = float(np.float32(rng.uniform(0.01, 0.5))), extreme_zero_point(seed, dtype) or 0
    b = Builder()
    x = b.tensor((rows, depth), dtype, in_scale, in_zp)
    y = b.tensor((rows, depth), dtype, 1 / 256, -128 if dtype == INT8 else 0)
    o = schema.SoftmaxOptionsT()
    o.beta = float(rng.choice([1.0, 0.5, 2.0]))
    content = b.build(OP.SOFTMAX, [x], [y], BO.SoftmaxOptions, o, version=2 if dtype == INT8 else 1)
    inputs = random_values(rng, (rows, depth), dtype)
    if narrow:  # many classes share the mass
        inputs = np.clip(inputs.astype(np.int64) // 16, *ti.dtype_range(dtype)).astype(dtype)
    assert_same_output(content, [inputs])


def test_softmax_refuses_where_tflites_reference_aborts():
    """A sum of exps of 2^9 or more (512 classes at the maximum): the reciprocal's shift
    passes 31 for an 8-bit output, where TFLite's TFLITE_CHECK aborts the process."""
    p = ti.softmax_params(1.0, ti.Quant.of(0.1, 0))
    assert ti.softmax(np.zeros((1, 511), np.int8), p, np.int8).shape == (1, 511)
    with pytest.raises(ValueError, match="exponent"):
        ti.softmax(np.zeros((1, 512), np.int8), p, np.int8)


@pytest.mark.parametrize("pair", [(UINT8, INT8), (INT8, UINT8), (INT8, INT8), (UINT8, UINT8)],
                         ids=["u8-i8", "i8-u8", "i8-i8", "u8-u8"])
@pytest.mark.parametrize("seed", range(4))
def test_requantize_matches_litert_reference(pair, seed):
    rng = np.random.default_rng(700 + seed)
    src, dst = pair
    shape = (1, int(rng.integers(1, 20)), 3)
    b = Builder()
    x = b.tensor(shape, src, *random_q(rng, src, extreme_zero_point(seed, src)))
    if seed == 0 and src != dst:  # the file's own case: same scale, zero points 128 apart
        q = b.tensors[x].quantization
        y = b.tensor(shape, dst, q.scale[0], q.zeroPoint[0] + (-128 if dst == INT8 else 128))
    else:
        y = b.tensor(shape, dst, *random_q(rng, dst, extreme_zero_point(seed + 1, dst)))
    content = b.build(OP.QUANTIZE, [x], [y], version=2)
    assert_same_output(content, [random_values(rng, shape, src)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "uint8"])
@pytest.mark.parametrize("seed", SEEDS)
def test_fully_connected_matches_litert_reference(dtype, seed):
    rng = np.random.default_rng(800 + seed)
    B, D, O = int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 12))
    in_scale, in_zp = random_q(rng, dtype, extreme_zero_point(seed, dtype))
    w_scale = float(np.float32(rng.uniform(0.002, 0.05)))
    w_zp = 0 if dtype == INT8 else int(rng.integers(0, 256))
    out_scale = float(np.float32(in_scale * w_scale * 128 * np.sqrt(D) * rng.uniform(0.3, 3)))
    out_zp = random_q(rng, dtype, extreme_zero_point(seed + 1, dtype))[1]
    w = random_values(rng, (O, D), dtype)
    if dtype == INT8:
        w = np.maximum(w, -127).astype(INT8)
    b = Builder()
    x = b.tensor((B, D), dtype, in_scale, in_zp)
    wt = b.tensor((O, D), dtype, w_scale, w_zp, data=w)
    bt = b.tensor((O,), np.int32, np.float32(in_scale) * np.float32(w_scale), 0,
                  data=rng.integers(-(1 << 14), 1 << 14, O).astype(np.int32))
    y = b.tensor((B, O), dtype, out_scale, out_zp)
    o = schema.FullyConnectedOptionsT()
    o.fusedActivationFunction = ACTIVATIONS[seed % 3]
    content = b.build(OP.FULLY_CONNECTED, [x, wt, bt], [y], BO.FullyConnectedOptions, o,
                      version=4 if dtype == INT8 else 1)
    assert_same_output(content, [random_values(rng, (B, D), dtype)])


# Scales whose product rounds differently in float32 and in double, and accumulators where
# that moves the output by one, or where a fixed-point multiplier and a rounded double
# product disagree (found by search). The input sits at its zero point and the weights at
# theirs, so that the accumulator is the bias.
PRODUCT_SCALES = (0.04064014, 0.016254846, 1.7181271)
PRODUCT_ACCUMULATORS = [-297798, 297798, -326408, 1300]


@pytest.mark.parametrize("op,dtype,requantization", [
    ("conv", UINT8, "float32 product"), ("conv", INT8, "double product"),
    ("depthwise", UINT8, "float32 product"), ("depthwise", INT8, "double product"),
    ("fully_connected", UINT8, "double, rounded"), ("fully_connected", INT8, "double, rounded")])
def test_requantization_follows_tflites_scale_arithmetic(op, dtype, requantization):
    """uint8 conv: the scale product in float32, int8 conv: in double, both then a
    fixed-point multiplier; FULLY_CONNECTED: round(acc * s_x * s_w / s_y) in double."""
    s_x, s_w, s_y = (np.float32(v) for v in PRODUCT_SCALES)
    acc = np.array(PRODUCT_ACCUMULATORS)
    by = {"float32 product": ti.multiply_by_quantized_multiplier(
              acc, *ti.quantize_multiplier(float(np.float32(s_x * s_w)) / float(s_y))),
          "double product": ti.multiply_by_quantized_multiplier(
              acc, *ti.quantize_multiplier(float(s_x) * float(s_w) / float(s_y))),
          "double, rounded": ti.round_half_away(acc * (float(s_x) * float(s_w) / float(s_y))).astype(np.int64)}
    expected = by[requantization]
    for other, values in by.items():
        assert other == requantization or (values != expected).any(), f"the case no longer tells {other} apart"
    zp = 128 if dtype == UINT8 else 0
    C = len(acc)
    b = Builder()
    x_shape, w_shape, y_shape = {"conv": ((1, 1, 1, 1), (C, 1, 1, 1), (1, 1, 1, C)),
                                 "depthwise": ((1, 1, 1, C), (1, 1, 1, C), (1, 1, 1, C)),
                                 "fully_connected": ((1, 1), (C, 1), (1, C))}[op]
    per_channel = dtype == INT8 and op != "fully_connected"
    x = b.tensor(x_shape, dtype, s_x, zp)
    w = b.tensor(w_shape, dtype, np.full(C, s_w) if per_channel else s_w, np.zeros(C, int) if per_channel else zp,
                 axis=3 if op == "depthwise" else 0, data=np.full(w_shape, zp))
    bias = b.tensor((C,), np.int32, np.float32(s_x * s_w), 0, data=acc.astype(np.int32))
    y = b.tensor(y_shape, dtype, s_y, zp)
    if op == "conv":
        o, code, kind = schema.Conv2DOptionsT(), OP.CONV_2D, BO.Conv2DOptions
    elif op == "depthwise":
        o, code, kind = schema.DepthwiseConv2DOptionsT(), OP.DEPTHWISE_CONV_2D, BO.DepthwiseConv2DOptions
        o.depthMultiplier = 1
    else:
        o, code, kind = schema.FullyConnectedOptionsT(), OP.FULLY_CONNECTED, BO.FullyConnectedOptions
    if op != "fully_connected":
        o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = ti.VALID, 1, 1, 1, 1
    version = {"conv": 3, "depthwise": 3, "fully_connected": 4}[op] if dtype == INT8 else 1
    ref = assert_same_output(b.build(code, [x, w, bias], [y], kind, o, version), [np.full(x_shape, zp, dtype)])
    assert list(ref.ravel().astype(int) - zp) == list(expected)


def test_an_operator_it_does_not_implement_is_refused_by_name():
    b = Builder()
    x = b.tensor((1, 4, 4, 1), INT8, 0.1, 0)
    y = b.tensor((1, 2, 2, 1), INT8, 0.1, 0)
    o = schema.Pool2DOptionsT()
    o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = ti.VALID, 2, 2, 2, 2
    content = b.build(OP.MAX_POOL_2D, [x], [y], BO.Pool2DOptions, o, version=2)
    with pytest.raises(ti.UnsupportedModelError, match=f"operator code {OP.MAX_POOL_2D}"):
        ti.run(content, np.zeros((1, 4, 4, 1), np.int8))


# -- the two MobileNetV2s, every tensor -------------------------------------------------------

def network_inputs(photo_paths):
    """Two photos (bilinear resize to 224x224, no crop) and two random images, uint8."""
    chosen = [p for p in photo_paths if p.name in ("cat.bmp", "parrot.jpg")] or photo_paths[:2]
    rng = np.random.default_rng(7)
    photos = [(p.name, np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), np.uint8))
              for p in chosen]
    noise = [(f"random{i}", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for i in range(2)]
    return photos + noise


# about 5 s a network (4 inputs): in the quick tier
@pytest.mark.parametrize("name", MODELS)
def test_every_tensor_of_the_network_matches_litert_reference(name, shared_data, photo_paths):
    content = (shared_data / "models" / name).read_bytes()
    tensors, ops, _, outputs = ti.read_model(content)
    for label, image in network_inputs(photo_paths):
        it = litert_ref(content, [image[None]])
        ours = ti.run(content, image[None])
        for k, op in enumerate(ops):
            index = op.outputs[0]
            ref, got = it.get_tensor(index), ours[index]
            assert got.dtype == ref.dtype and got.shape == ref.shape, (label, k, tensors[index].name)
            differ = int((got != ref).sum())
            assert differ == 0, (f"{name} on {label}: op {k} ({tensors[index].name}) differs from LiteRT's "
                                 f"reference in {differ} of {ref.size} values")
        assert len(ops) in (66, 68) and ours[outputs[0]].shape == (1, 1001)
