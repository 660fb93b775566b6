"""A quantized source's integer arithmetic, kept in mnv2.h5 as the source stores it.

The references are LiteRT's own reading of the two real quantized files
(`get_tensor_details()`, `get_tensor()`), mapped to the engine's layer names by the test's
own walk over the flatbuffer's ops; never the converter under test. Bad quantization in a
TFLite source (edited with the flatbuffer object API) or in an mnv2.h5 file (edited with
h5py) is refused, naming the tensor.
"""
import copy
import dataclasses
import math

import h5py
import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert
from mnv2engine.arch import Architecture
from mnv2engine.cli import main
from mnv2engine.weights import read_mnv2, write_mnv2
from mnv2engine.weights.quantization import quantize_multiplier
from mnv2engine.weights.random import random_weightset
from mnv2engine.weights.tflite import read_tflite

from conftest import require

import tflite_edit
from tflite_edit import code_of, pack, schema, unpack
OP = schema.BuiltinOperator

MODELS = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")
ARCH = Architecture(alpha=1.0, size=224, classes=1001)


def engine_names(model) -> dict:
    return tflite_edit.engine_names(model, ARCH)


def engine_layout(q: np.ndarray) -> np.ndarray:
    """TFLite's weight layout in the engine's: OHWI -> HWIO, 1x1 [O,1,1,I] -> [I,O],
    depthwise [1,3,3,C] -> [3,3,C], dense [O,I] -> [I,O]."""
    if q.ndim == 2:
        return q.T
    if q.shape[0] == 1:
        return q[0]
    if q.shape[1:3] == (1, 1):
        return q[:, 0, 0, :].T
    return q.transpose(1, 2, 3, 0)


def litert(path):
    """LiteRT's interpreter without XNNPACK, which takes the constant tensors over."""
    interpreter = require("ai_edge_litert.interpreter")
    it = interpreter.Interpreter(model_path=str(path), experimental_op_resolver_type=
                                 interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it, {d["index"]: d for d in it.get_tensor_details()}


def scales_of(detail):
    p = detail["quantization_parameters"]
    return p["scales"], p["zero_points"].astype(np.int64), p["quantized_dimension"]


def litert_dequantized(q: np.ndarray, detail) -> np.ndarray:
    """float32 (q - zero_point) * scale along the quantized dimension, in float64, from
    LiteRT's parameters."""
    scale, zero_point, axis = scales_of(detail)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    zp = zero_point.reshape(shape) if zero_point.size == scale.size else zero_point[:1]
    return ((q.astype(np.float64) - zp.astype(np.float64)) * scale.astype(np.float64).reshape(shape)).astype(np.float32)


@pytest.fixture(scope="module", params=MODELS)
def source(request, shared_data, tmp_path_factory):
    """A real quantized model: its path, LiteRT's view of it, the test's name map, the
    converter's WeightSet and what mnv2.h5 gives back."""
    path = shared_data / "models" / request.param
    it, details = litert(path)
    model = unpack(path.read_bytes())
    dst = tmp_path_factory.mktemp("quantized") / "mnv2.h5"
    ws = convert(path, dst)
    return {"path": path, "it": it, "details": details, "model": model, "names": engine_names(model),
            "ws": ws, "h5": dst, "back": read_mnv2(dst)}


# -- what is kept, against LiteRT -------------------------------------------------------

@pytest.mark.parametrize("which", ["ws", "back"], ids=["converted", "through mnv2.h5"])
def test_integer_weights_and_biases_are_litert_s(source, which):
    q = source[which].quantization
    assert q is not None and set(q.layers) == set(ARCH.tensor_shapes())
    for name, layer in q.layers.items():
        op = source["names"][name]
        w, b = (source["details"][int(op.inputs[i])] for i in (1, 2))
        kernel = engine_layout(source["it"].get_tensor(w["index"]))
        assert layer.kernel.dtype == w["dtype"] and layer.kernel.shape == kernel.shape, name
        assert layer.kernel.tobytes() == np.ascontiguousarray(kernel).tobytes(), name
        scale, zero_point, _ = scales_of(w)
        assert layer.kernel_scale.dtype == np.float32 and np.array_equal(layer.kernel_scale, scale), name
        assert np.array_equal(layer.kernel_zero_point, np.broadcast_to(zero_point, scale.shape)), name
        bias = source["it"].get_tensor(b["index"])
        assert b["dtype"] == np.int32 and layer.bias.dtype == np.int32 and np.array_equal(layer.bias, bias), name
        bias_scale, bias_zero_point, _ = scales_of(b)
        assert np.array_equal(layer.bias_scale, bias_scale) and not bias_zero_point.any(), name


@pytest.mark.parametrize("which", ["ws", "back"], ids=["converted", "through mnv2.h5"])
def test_every_activation_s_quantization_is_litert_s(source, which):
    """Each layer's output (after its fused activation), each residual sum, the pooled
    features, the logits, the softmax, and what the stem reads."""
    acts = source[which].quantization.activations
    outputs = {name: int(op.outputs[0]) for name, op in source["names"].items()}
    outputs["input"] = int(source["names"]["stem"].inputs[0])
    assert set(acts) == set(outputs)
    for name, index in outputs.items():
        d = source["details"][index]
        scale, zero_point, _ = scales_of(d)
        got = acts[name]
        assert (got.dtype, got.scale, got.zero_point) == (np.dtype(d["dtype"]).name, float(scale[0]),
                                                          int(zero_point[0])), name


def test_the_float_tensors_are_the_dequantized_ones_as_before(source):
    """The float path is unchanged: every float kernel and bias is, bit for bit, the
    test's dequantization of LiteRT's integer tensors, converted and through mnv2.h5."""
    for name, op in source["names"].items():
        if name.endswith("residual") or name in ("pool", "softmax"):
            continue
        w, b = (source["details"][int(op.inputs[i])] for i in (1, 2))
        kernel = engine_layout(litert_dequantized(source["it"].get_tensor(w["index"]), w))
        bias = litert_dequantized(source["it"].get_tensor(b["index"]), b)
        for which in ("ws", "back"):
            layer = source[which].layers[name]
            assert layer.kernel.dtype == np.float32 and layer.kernel.tobytes() == np.ascontiguousarray(kernel).tobytes()
            assert layer.bias.tobytes() == bias.tobytes(), (which, name)


def test_the_engine_runs_the_float_tensors_whatever_the_quantization(source):
    ws = source["back"]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    without = Engine(dataclasses.replace(ws, quantization=None)).forward(x)
    assert Engine.load(source["h5"], quantized=False).forward(x).tobytes() == without.tobytes()


def test_round_trip_through_mnv2_h5_is_exact(source, tmp_path):
    """Written, read, converted again (mnv2.h5 to mnv2.h5): the same dtypes and bytes."""
    again = convert(source["h5"], tmp_path / "again.h5")
    for ws in (source["back"], again, read_mnv2(tmp_path / "again.h5")):
        q, want = ws.quantization, source["ws"].quantization
        assert q.activations == want.activations
        assert q.layers.keys() == want.layers.keys()
        for name, layer in want.layers.items():
            for tname, arr in layer.tensors().items():
                got = q.layers[name].tensors()[tname]
                assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes()


def test_mnv2_convert_writes_the_quantization(shared_data, tmp_path):
    src = shared_data / "models" / MODELS[1]
    assert main(["convert", str(src), str(tmp_path / "q.h5")]) == 0
    with h5py.File(tmp_path / "q.h5", "r") as f:
        assert f.attrs["schema_version"] == 4
        assert f["quantization/layers/block5/expand/kernel"].dtype == np.uint8
        assert f["quantization/layers/classifier/bias"].dtype == np.int32
        assert f["quantization/activations/softmax"].attrs["dtype"] == b"uint8"
    it, details = litert(src)
    head = engine_names(unpack(src.read_bytes()))["head"]
    w = details[int(head.inputs[1])]
    kernel = read_mnv2(tmp_path / "q.h5").quantization.layers["head"].kernel
    assert kernel.tobytes() == np.ascontiguousarray(engine_layout(it.get_tensor(w["index"]))).tobytes()


def test_a_float_model_has_no_quantization(tmp_path):
    write_mnv2(random_weightset(alpha=0.35, size=32, classes=3), tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f.attrs["schema_version"] == 4 and "quantization" not in f
    assert read_mnv2(tmp_path / "f.h5").quantization is None


# -- TFLite's QuantizeMultiplier ----------------------------------------------------------

@pytest.mark.parametrize("real", [1e-9, 2.0 ** -31, 0.0003, 0.5, 0.75, 1 - 2.0 ** -40, 1.0, 3.7, 2.0 ** 29 * 1.5])
def test_quantize_multiplier_is_a_q31_fraction_and_a_shift(real):
    """real = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31), rounded to nearest."""
    multiplier, shift = quantize_multiplier(real)
    assert 1 << 30 <= multiplier < 1 << 31 and -31 <= shift <= 30
    assert abs(multiplier * 2.0 ** (shift - 31) - real) <= 2.0 ** (shift - 32)


def test_quantize_multiplier_rounds_half_away_from_zero_and_carries():
    """TfLiteRound (std::round): a fraction exactly halfway rounds up, not to even; a
    fraction that rounds to 2^31 becomes 2^30 with the shift one more."""
    assert quantize_multiplier(0.5 + 2.0 ** -32) == ((1 << 30) + 1, 0)
    assert quantize_multiplier(1 - 2.0 ** -33) == (1 << 30, 1)


@pytest.mark.parametrize("real", [0.0, -0.5, math.nan, math.inf, 2.0 ** -33, 2.0 ** 30, 2.0 ** 31])
def test_quantize_multiplier_refuses_what_tflite_cannot_represent(real):
    with pytest.raises(ValueError):
        quantize_multiplier(real)


# -- bad quantization in a TFLite source ---------------------------------------------------

@pytest.fixture(scope="module")
def int8_source(shared_data):
    return unpack((shared_data / "models" / MODELS[0]).read_bytes())


@pytest.fixture(scope="module")
def uint8_source(shared_data):
    return unpack((shared_data / "models" / MODELS[1]).read_bytes())


def tensor_of(model, layer: str, which: str):
    """The flatbuffer tensor of a layer's weights, bias or output (the test's own map)."""
    op = engine_names(model)[layer]
    index = {"weights": op.inputs[1], "bias": op.inputs[2] if len(op.inputs) > 2 else None,
             "output": op.outputs[0]}[which]
    return model.subgraphs[0].tensors[int(index)]


def _set(values, at, value, dtype):
    out = np.array(values, dtype)
    out[at] = value
    return out


TFLITE_DAMAGE = {
    "zero weight scale": ("int8", "block2/expand", "weights",
                          lambda q: setattr(q, "scale", _set(q.scale, 5, 0.0, np.float32)),
                          r"tensor \S+ \(block2/expand weights\): scale 0\.0 \(channel 5\): a scale must be positive"),
    "negative activation scale": ("uint8", "block4/depthwise", "output",
                                  lambda q: setattr(q, "scale", _set(q.scale, 0, -0.02, np.float32)),
                                  r"\(block4/depthwise\): scale -0\.0\d+: a scale must be positive and finite"),
    "NaN bias scale": ("int8", "head", "bias", lambda q: setattr(q, "scale", _set(q.scale, 7, np.nan, np.float32)),
                       r"\(head bias\): scale nan \(channel 7\)"),
    "uint8 zero point 256": ("uint8", "block6/project", "output",
                             lambda q: setattr(q, "zeroPoint", _set(q.zeroPoint, 0, 256, np.int64)),
                             r"\(block6/project\): zero point 256 is outside uint8's range \[0, 255\]"),
    "int8 zero point -129": ("int8", "stem", "output",
                             lambda q: setattr(q, "zeroPoint", _set(q.zeroPoint, 0, -129, np.int64)),
                             r"\(stem\): zero point -129 is outside int8's range \[-128, 127\]"),
    "asymmetric int8 weights": ("int8", "block3/project", "weights",
                                lambda q: setattr(q, "zeroPoint", _set(q.zeroPoint, 2, 3, np.int64)),
                                r"block3/project/kernel_zero_point: 3: .* symmetric"),
    "a per-channel scale short": ("int8", "block1/depthwise", "weights",
                                  lambda q: (setattr(q, "scale", q.scale[:-1]), setattr(q, "zeroPoint", q.zeroPoint[:-1])),
                                  r"\(block1/depthwise weights\): 95 scales along dimension 3 .* one per output channel \(96\)"),
    "per-channel scales along the input": ("int8", "block5/expand", "weights",
                                           lambda q: setattr(q, "quantizedDimension", 3),
                                           r"\(block5/expand weights\): 192 scales along dimension 3 .* along dimension 0"),
    "a multiplier that overflows": ("int8", "block7/expand", "output",
                                    lambda q: setattr(q, "scale", _set(q.scale, 0, 1e-30, np.float32)),
                                    r"block7/expand: requantization multiplier .* overflows int32"),
    "a multiplier flushed to zero": ("uint8", "block5/expand", "output",
                                     lambda q: setattr(q, "scale", _set(q.scale, 0, 1e30, np.float32)),
                                     r"block5/expand: requantization multiplier .* flushes it to zero"),
    "a bias at another scale": ("uint8", "block9/expand", "bias",
                                lambda q: setattr(q, "scale", _set(q.scale, 0, q.scale[0] * 1.01, np.float32)),
                                r"block9/expand/bias_scale: .* is not input scale \* weight scale"),
    "a nonzero bias zero point": ("int8", "block0/project", "bias",
                                  lambda q: setattr(q, "zeroPoint", _set(q.zeroPoint, 0, 1, np.int64)),
                                  r"\(block0/project bias\): zero point 1, an int32 bias has zero point 0"),
}


@pytest.mark.parametrize("case", list(TFLITE_DAMAGE))
def test_bad_quantization_in_a_tflite_file_is_refused_naming_the_tensor(case, int8_source, uint8_source, tmp_path):
    kind, layer, which, damage, message = TFLITE_DAMAGE[case]
    model = copy.deepcopy(int8_source if kind == "int8" else uint8_source)
    damage(tensor_of(model, layer, which).quantization)
    path = tmp_path / "bad.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(WeightFileError, match=r"bad\.tflite: .*" + message):
        read_tflite(path)


def test_a_requantization_between_layers_is_refused(int8_source, tmp_path):
    """The depthwise of block 2 reading its input at another scale than block 2's expansion
    writes it (as a QUANTIZE between them would make it): one quantization per activation."""
    model = copy.deepcopy(int8_source)
    names = engine_names(model)
    sg = model.subgraphs[0]
    consumed = sg.tensors[int(names["block2/depthwise"].inputs[0])]
    copied = copy.deepcopy(consumed)
    copied.quantization.scale = np.array([consumed.quantization.scale[0] * 2], np.float32)
    copied.name = b"requantized"
    sg.tensors.append(copied)
    quantize = schema.OperatorT()
    codes = [i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == OP.QUANTIZE]
    quantize.opcodeIndex = codes[0]
    quantize.inputs = np.array([names["block2/depthwise"].inputs[0]], np.int32)
    quantize.outputs = np.array([len(sg.tensors) - 1], np.int32)
    sg.operators.insert(sg.operators.index(names["block2/depthwise"]), quantize)
    names["block2/depthwise"].inputs[0] = len(sg.tensors) - 1
    path = tmp_path / "requantized.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(WeightFileError, match=r"\(block2/depthwise\) reads tensor requantized .* a requantization"):
        read_tflite(path)


def test_a_softmax_with_another_beta_is_refused(int8_source, tmp_path):
    """beta scales the logits before the softmax: mnv2engine's softmax has none (beta 1)."""
    model = copy.deepcopy(int8_source)
    engine_names(model)["softmax"].builtinOptions.beta = 2.0
    path = tmp_path / "beta.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(WeightFileError, match=r"beta\.tflite: op \d+ \(SOFTMAX\): a softmax with beta 2\.0"):
        read_tflite(path)


def test_an_int8_pool_as_average_pool_2d_is_refused(int8_source, tmp_path):
    """TFLite's int8 AVERAGE_POOL_2D rounds (sum + n / 2) / n, MEAN requantizes: the int8
    pool runs as MEAN, so an int8 file that pools otherwise is refused, not run 1 LSB off."""
    model = copy.deepcopy(int8_source)
    mean = engine_names(model)["pool"]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = OP.AVERAGE_POOL_2D
    code.version = 1
    model.operatorCodes.append(code)
    options = schema.Pool2DOptionsT()
    options.padding, options.strideH, options.strideW = schema.Padding.VALID, 1, 1
    options.filterHeight = options.filterWidth = 7
    mean.opcodeIndex = len(model.operatorCodes) - 1
    mean.inputs = mean.inputs[:1]
    mean.builtinOptionsType, mean.builtinOptions = schema.BuiltinOptions.Pool2DOptions, options
    path = tmp_path / "pool.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(WeightFileError, match=r"pool\.tflite: op \d+ \(AVERAGE_POOL_2D\): the global pool of a file "
                                              r"quantized to int8 is AVERAGE_POOL_2D; mnv2engine runs int8's as MEAN"):
        read_tflite(path)


# -- bad quantization in mnv2.h5 -----------------------------------------------------------

def _replace(f, path, data):
    del f[path]
    f.create_dataset(path, data=data)


H5_DAMAGE = {
    "zero activation scale": (lambda f: f["quantization/activations/block3/expand"].attrs.modify("scale", np.float32(0)),
                              r"quantization/activations/block3/expand: scale 0\.0"),
    "negative weight scale": (lambda f: f["quantization/layers/block2/depthwise/kernel_scale"].__setitem__(4, -0.5),
                              r"quantization/layers/block2/depthwise/kernel_scale: scale -0\.5 \(channel 4\)"),
    "NaN bias scale": (lambda f: f["quantization/layers/head/bias_scale"].__setitem__(0, np.nan),
                       r"quantization/layers/head/bias_scale: scale nan"),
    "zero point out of range": (lambda f: f["quantization/activations/pool"].attrs.modify("zero_point", np.int64(128)),
                                r"quantization/activations/pool: zero point 128 is outside int8's range"),
    "weight zero point out of range": (lambda f: f["quantization/layers/stem/kernel_zero_point"].__setitem__(0, 300),
                                       r"quantization/layers/stem/kernel_zero_point: zero point 300"),
    "scale count": (lambda f: _replace(f, "quantization/layers/block4/expand/kernel_scale",
                                       f["quantization/layers/block4/expand/kernel_scale"][:-1]),
                    r"quantization/layers/block4/expand/kernel_scale: 191 values for 192 output channels"),
    "multiplier": (lambda f: f["quantization/activations/block8/project"].attrs.modify("scale", np.float32(1e-30)),
                   r"quantization/layers/block8/project: requantization multiplier .* overflows int32"),
    "activation dtype": (lambda f: f["quantization/activations/input"].attrs.__setitem__("dtype", np.bytes_(b"int16")),
                         r"quantization/activations/input: quantized type 'int16'"),
    "kernel dtype": (lambda f: _replace(f, "quantization/layers/block1/project/kernel",
                                        f["quantization/layers/block1/project/kernel"][()].astype(np.int16)),
                     r"quantization/layers/block1/project/kernel: expected int8 or uint8"),
    "missing activation": (lambda f: f.__delitem__("quantization/activations/block4/residual"),
                           r"quantization/activations/block4/residual: missing"),
    "missing tensor": (lambda f: f.__delitem__("quantization/layers/block6/depthwise/bias"),
                       r"quantization/layers/block6/depthwise: missing bias"),
    "stray tensor": (lambda f: f.create_dataset("quantization/layers/head/extra", data=np.zeros(3)),
                     r"unexpected item\(s\) in /quantization: layers/head/extra"),
    "in a version 3 file": (lambda f: f.attrs.modify("schema_version", 3),
                            r"a /quantization group in a schema version 3 file"),
}


@pytest.fixture(scope="module")
def int8_h5(shared_data, tmp_path_factory):
    dst = tmp_path_factory.mktemp("int8") / "mnv2.h5"
    convert(shared_data / "models" / MODELS[0], dst)
    return dst


@pytest.mark.parametrize("case", list(H5_DAMAGE))
def test_bad_quantization_in_mnv2_h5_is_refused_naming_the_tensor(case, int8_h5, tmp_path):
    damage, message = H5_DAMAGE[case]
    path = tmp_path / "bad.h5"
    path.write_bytes(int8_h5.read_bytes())
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(WeightFileError, match=r"bad\.h5: " + message):
        read_mnv2(path)
