"""TFLite -> mnv2.h5, checked against the LiteRT interpreter running the same file.

The two real quantized MobileNetV2s of shared/data must give the interpreter's top-1 on
every photo. Variants built from the int8 one with the schema's object API (float32,
float16 weights, explicit PAD ops, an int8 input) must give the interpreter's logits or
top-1 too. Altered MobileNetV2s, another network and truncated files are refused naming
the problem. References come from LiteRT only, never from the engine.
"""
import copy
import warnings

import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine, WeightFileError, convert
from mnv2engine.weights.tflite import read_tflite

from conftest import close, probabilities, require, softmax

from tflite_edit import code_of, engine_names, pack, schema, unpack
OP, TT = schema.BuiltinOperator, schema.TensorType

MODELS = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")
# Odd by even; the last feature map 4x5, so that a pool window read the wrong way round shows.
NON_SQUARE = (97, 160)
# shared/data/README.md: the interpreter's top-1 of each photo, for both models
README_TOP1 = {"cat.bmp": "Egyptian cat", "bird.bmp": "chickadee", "grace_hopper.bmp": "military uniform",
               "parrot.jpg": "macaw", "owl.jpg": "ruffed grouse", "hot_dog.jpg": "hotdog",
               "sunflower.bmp": "daisy", "dragonfly.bmp": "dragonfly", "kite_and_cold.jpg": "seashore"}


# -- model surgery with the flatbuffer object API --------------------------------------

def opcode(model, code: int, version: int = 1) -> int:
    for i, c in enumerate(model.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
            return i
    c = schema.OperatorCodeT()
    c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), version
    model.operatorCodes.append(c)
    return len(model.operatorCodes) - 1


def add_tensor(model, name: str, shape, ttype: int, data: np.ndarray | None = None) -> int:
    t = schema.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), ttype, 0
    if data is not None:
        b = schema.BufferT()
        b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        model.buffers.append(b)
        t.buffer = len(model.buffers) - 1
    model.subgraphs[0].tensors.append(t)
    return len(model.subgraphs[0].tensors) - 1


def add_op(model, position: int, code: int, inputs, outputs, options_type=0, options=None, version=1):
    op = schema.OperatorT()
    op.opcodeIndex = opcode(model, code, version)
    op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    model.subgraphs[0].operators.insert(position, op)
    return op


def ops_of(model, code: int):
    return [op for op in model.subgraphs[0].operators if code_of(model, op) == code]


def remove_op(model, op, keep_input: int):
    """Drop `op`, feeding its consumers (and the graph outputs) its input `keep_input`."""
    sg = model.subgraphs[0]
    sg.operators.remove(op)
    out = op.outputs[0]
    for other in sg.operators:
        other.inputs = np.where(other.inputs == out, keep_input, other.inputs).astype(np.int32)
    sg.outputs = np.where(sg.outputs == out, keep_input, sg.outputs).astype(np.int32)


def dequantized(model, t) -> np.ndarray:
    """The test's own dequantization, (q - zero_point) * scale along quantized_dimension."""
    q = t.quantization
    dtype = {TT.INT8: np.int8, TT.UINT8: np.uint8, TT.INT32: np.int32}[t.type]
    v = np.frombuffer(model.buffers[t.buffer].data.tobytes(), dtype).reshape(t.shape).astype(np.float64)
    shape = [1] * v.ndim
    if len(q.scale) > 1:
        shape[q.quantizedDimension] = -1
    return ((v - np.reshape(q.zeroPoint, shape)) * np.reshape(q.scale, shape)).astype(np.float32)


def float32_logits_model(quantized):
    """The quantized model as a float32 one with logits out: every quantized constant
    dequantized, every activation float32, the QUANTIZE ops and the softmax removed."""
    m = copy.deepcopy(quantized)
    sg = m.subgraphs[0]
    for t in sg.tensors:
        if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale):
            if m.buffers[t.buffer].data is not None and len(m.buffers[t.buffer].data):
                m.buffers[t.buffer].data = np.frombuffer(dequantized(m, t).tobytes(), np.uint8)
            t.type, t.quantization = TT.FLOAT32, None
    for op in ops_of(m, OP.QUANTIZE) + ops_of(m, OP.SOFTMAX):
        remove_op(m, op, op.inputs[0])
    m.metadata, m.signatureDefs = None, None
    return m


def float16_weights(model):
    """Conv weights stored as float16 behind DEQUANTIZE ops, as TFLite's float16 quantization writes them."""
    m = copy.deepcopy(model)
    sg = m.subgraphs[0]
    for op in [op for op in sg.operators if code_of(m, op) in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D)]:
        w = sg.tensors[op.inputs[1]]
        values = np.frombuffer(m.buffers[w.buffer].data.tobytes(), np.float32).reshape(w.shape)
        half = add_tensor(m, w.name.decode() + "_fp16", w.shape, TT.FLOAT16, values.astype(np.float16))
        w.buffer = 0
        add_op(m, 0, OP.DEQUANTIZE, [half], [op.inputs[1]], version=3)
    return m


def tf_same(n: int, stride: int = 2, kernel: int = 3) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis: out = ceil(n / stride), total =
    max((out - 1) * stride + kernel - n, 0), the smaller half before."""
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def explicit_padding(model, pads=None, swap_axes=False):
    """Every stride-2 3x3 conv as PAD + VALID conv, as Keras's ZeroPadding2D converts:
    `pads` (before, after) on both axes, or by default TF 'same' for each axis's own size
    (0 before and 1 after on an even size, 1 and 1 on an odd one); swap_axes pads the
    rows as the columns should be and the other way round."""
    m = copy.deepcopy(model)
    sg = m.subgraphs[0]
    for op in list(sg.operators):
        o = op.builtinOptions
        if code_of(m, op) in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D) and o.strideH == 2:
            x = sg.tensors[op.inputs[0]]
            n, h, w, c = x.shape
            (top, bottom), (left, right) = (pads, pads) if pads else (tf_same(h), tf_same(w))
            if swap_axes:
                (top, bottom), (left, right) = (left, right), (top, bottom)
            paddings = add_tensor(m, "paddings", (4, 2), TT.INT32,
                                  np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
            padded = add_tensor(m, x.name.decode() + "_padded", (n, h + top + bottom, w + left + right, c),
                                TT.FLOAT32)
            add_op(m, sg.operators.index(op), OP.PAD, [op.inputs[0], paddings], [padded])
            op.inputs[0], o.padding = padded, schema.Padding.VALID
    return m


def at_size(model, size):
    """The model with a (height, width) input: an AVERAGE_POOL_2D's window the last feature
    map (five stride-2 layers: ceil(side / 32)), every activation's shape as LiteRT works
    it out. The converter reads only the input's shape and the window."""
    m = copy.deepcopy(model)
    sg = m.subgraphs[0]
    sg.tensors[sg.inputs[0]].shape = np.array([1, *size, 3], np.int32)
    for op in ops_of(m, OP.AVERAGE_POOL_2D):
        op.builtinOptions.filterHeight, op.builtinOptions.filterWidth = (-(-n // 32) for n in size)
    for d in interpreter(pack(m)).get_tensor_details():
        sg.tensors[d["index"]].shape = np.array(d["shape"], np.int32)
    return m


def tiny_other_network():
    """Not a MobileNetV2: conv 3x3/2 to 8 channels, global mean, dense to 10 classes."""
    m = schema.ModelT()
    m.version, m.operatorCodes, m.buffers = 3, [], [schema.BufferT()]
    sg = schema.SubGraphT()
    sg.tensors, sg.operators = [], []
    m.subgraphs = [sg]
    rng = np.random.default_rng(0)
    x = add_tensor(m, "image", (1, 32, 32, 3), TT.FLOAT32)
    w = add_tensor(m, "conv/w", (8, 3, 3, 3), TT.FLOAT32, rng.normal(size=(8, 3, 3, 3)).astype(np.float32))
    b = add_tensor(m, "conv/b", (8,), TT.FLOAT32, np.zeros(8, np.float32))
    y = add_tensor(m, "conv", (1, 16, 16, 8), TT.FLOAT32)
    axes = add_tensor(m, "axes", (2,), TT.INT32, np.array([1, 2], np.int32))
    pooled = add_tensor(m, "pooled", (1, 8), TT.FLOAT32)
    fw = add_tensor(m, "dense/w", (10, 8), TT.FLOAT32, rng.normal(size=(10, 8)).astype(np.float32))
    fb = add_tensor(m, "dense/b", (10,), TT.FLOAT32, np.zeros(10, np.float32))
    logits = add_tensor(m, "logits", (1, 10), TT.FLOAT32)
    conv = schema.Conv2DOptionsT()
    conv.strideH = conv.strideW = 2
    conv.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    add_op(m, 0, OP.CONV_2D, [x, w, b], [y], schema.BuiltinOptions.Conv2DOptions, conv)
    add_op(m, 1, OP.MEAN, [y, axes], [pooled], schema.BuiltinOptions.ReducerOptions, schema.ReducerOptionsT())
    add_op(m, 2, OP.FULLY_CONNECTED, [pooled, fw, fb], [logits],
           schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT())
    sg.inputs, sg.outputs = np.array([x], np.int32), np.array([logits], np.int32)
    return m


# -- references ------------------------------------------------------------------------

def interpreter(content: bytes):
    """A LiteRT interpreter keeping every tensor, so the logits before the softmax can be read."""
    Interpreter = require("ai_edge_litert.interpreter").Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors is labelled a debugging aid
        it = Interpreter(model_content=content, num_threads=2, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


def litert_logits(content: bytes, inputs) -> np.ndarray:
    """Dequantized input of the model's SOFTMAX (the logits), or its output where there is none."""
    model = unpack(content)
    softmax = ops_of(model, OP.SOFTMAX)
    index = int(softmax[0].inputs[0] if softmax else model.subgraphs[0].outputs[0])
    it = interpreter(content)
    image = it.get_input_details()[0]["index"]
    detail = next(d for d in it.get_tensor_details() if d["index"] == index)
    scale, zero_point = detail["quantization"]
    out = []
    for x in inputs:
        it.set_tensor(image, x[None])
        it.invoke()
        q = it.get_tensor(index).reshape(-1).astype(np.float64)
        out.append((q - zero_point) * scale if scale else q)
    return np.array(out)


@pytest.fixture(scope="module")
def photos(shared_data):
    """(name, 224x224 uint8 RGB) of every photo: plain bilinear resize, no crop."""
    paths = sorted((shared_data / "images").glob("*.*"))
    paths = [p for p in paths if p.suffix.lower() in (".bmp", ".jpg", ".jpeg", ".png")]
    assert paths, "no photos in shared/data/images"
    return [(p.name, np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)))
            for p in paths]


@pytest.fixture(scope="module", params=MODELS)
def model(request, shared_data, photos, tmp_path_factory):
    """One real model: converted to mnv2.h5 and loaded in float32 on its dequantized weights
    (the integer engine: test_quantized_engine.py), with the interpreter's logits on every photo."""
    src = shared_data / "models" / request.param
    dst = tmp_path_factory.mktemp("tflite") / "mnv2.h5"
    ws = convert(src, dst, labels=shared_data / "imagenet_labels.txt")
    engine = Engine.load(dst, quantized=False)
    pixels = [p for _, p in photos]
    return {"name": request.param, "ws": ws, "engine": engine, "pixels": pixels,
            "reference": litert_logits(src.read_bytes(), pixels),
            "predictions": engine.predict(pixels, top=5, crop=False),
            "logits": engine.forward(np.stack([p * ws.scale + ws.offset for p in pixels]).astype(np.float32))}


# -- the real models ------------------------------------------------------------------

def test_converts_to_a_1001_class_mobilenet_v2(model, shared_data):
    ws, engine = model["ws"], model["engine"]
    assert (ws.alpha, tuple(ws.size), ws.classes, ws.padding) == (1.0, (224, 224), 1001, "same")
    assert ws.source.startswith("tflite ") and ws.source.endswith(model["name"])
    assert (ws.crop, ws.crop_fraction) == ("central", 0.875)  # TF's ImageNet evaluation
    labels = (shared_data / "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    assert engine.labels == labels  # 1001 lines, 'background' first, as the outputs
    assert all(label == labels[i] for pred in model["predictions"] for i, label, _ in pred)


def test_labels_come_from_the_model_metadata(model, shared_data):
    """Both files carry the label map as an associated file: no --labels needed."""
    ws = read_tflite(shared_data / "models" / model["name"])
    assert ws.labels == (shared_data / "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()


def test_preprocessing_follows_the_input_quantization(model):
    scale, zero_point = {"tf2_mobilenet_v2_1.0_224_ptq.tflite": (0.00784314, 127),
                         "mobilenet_v2_1.0_224_quant.tflite": (1 / 128, 128)}[model["name"]]
    np.testing.assert_allclose(model["ws"].scale, [scale] * 3, rtol=1e-5)
    np.testing.assert_allclose(model["ws"].offset, [-zero_point * scale] * 3, rtol=1e-5)


def test_top1_of_every_photo_matches_litert(model, photos):
    ref_top1 = model["reference"].argmax(axis=1)
    got = [p[0][0] for p in model["predictions"]]
    assert got == ref_top1.tolist(), [name for (name, _), g, r in zip(photos, got, ref_top1) if g != r]


def test_top5_overlaps_litert_in_at_least_4(model, photos):
    for (name, _), pred, ref in zip(photos, model["predictions"], model["reference"]):
        overlap = {i for i, _, _ in pred} & set(np.argsort(-ref, kind="stable")[:5].tolist())
        assert len(overlap) >= 4, f"{name}: top-5 overlap {len(overlap)}"


def test_top1_names_match_the_data_readme(model, photos):
    for (name, _), pred in zip(photos, model["predictions"]):
        if name in README_TOP1:
            assert pred[0][1].split(",")[0] == README_TOP1[name], name


def test_logits_are_near_the_quantized_interpreters(model):
    """A float engine on dequantized weights vs integer arithmetic: near, not equal."""
    close(model["logits"], model["reference"], rel=0.1)


def test_own_dequantization_matches_litert_on_the_tests_dequantized_model(model, shared_data):
    """The engine dequantized the int8/uint8 file itself; LiteRT runs the same graph with
    float32 constants that `dequantized` (above) made: the same numbers, so the logits
    agree to float rounding. The integer interpreter is too far off to see, say, every
    bias 5% too small."""
    src = shared_data / "models" / model["name"]
    reference = pack(float32_logits_model(unpack(src.read_bytes())))
    x = np.stack([p * model["ws"].scale + model["ws"].offset for p in model["pixels"]]).astype(np.float32)
    close(model["logits"], litert_logits(reference, x), rel=1e-4)


# -- float variants built from the int8 model ------------------------------------------

@pytest.fixture(scope="module")
def int8_model(shared_data):
    """The int8 model unpacked for surgery (tests alter copies)."""
    return unpack((shared_data / "models" / MODELS[0]).read_bytes())


@pytest.fixture(scope="module")
def float_model(int8_model):
    return float32_logits_model(int8_model)


@pytest.mark.parametrize("variant", [lambda m: m, float16_weights, explicit_padding],
                         ids=["float32", "float16", "explicit padding"])
def test_float_variants_match_litert_logits(variant, float_model, photos, tmp_path):
    src = tmp_path / "model.tflite"
    src.write_bytes(pack(variant(float_model)))
    ws = read_tflite(src)
    assert (ws.alpha, ws.classes, ws.labels) == (1.0, 1001, None)
    np.testing.assert_allclose(ws.scale, 1 / 127.5, rtol=1e-6)
    np.testing.assert_allclose(ws.offset, -1.0, rtol=1e-6)
    x = np.stack([p * ws.scale + ws.offset for _, p in photos[:3]]).astype(np.float32)
    close(Engine(ws).forward(x), litert_logits(src.read_bytes(), x), rel=1e-4)


def test_int8_input_takes_pixels_minus_128(int8_model, photos, tmp_path):
    """Without its leading QUANTIZE the int8 model takes int8 pixels: q = pixel - 128."""
    m = copy.deepcopy(int8_model)
    first = m.subgraphs[0].operators[0]
    assert code_of(m, first) == OP.QUANTIZE
    m.subgraphs[0].operators.remove(first)
    m.subgraphs[0].inputs = np.array(first.outputs, np.int32)
    src = tmp_path / "int8_input.tflite"
    src.write_bytes(pack(m))
    ws = read_tflite(src)
    it = interpreter(src.read_bytes())
    scale, zero_point = it.get_input_details()[0]["quantization"]
    assert it.get_input_details()[0]["dtype"] == np.int8
    pixels = np.arange(256, dtype=np.float32)[:, None].repeat(3, axis=1)
    np.testing.assert_allclose(pixels * ws.scale + ws.offset, (pixels - 128 - zero_point) * scale, atol=1e-6)
    inputs = [(p.astype(np.int16) - 128).astype(np.int8) for _, p in photos[:3]]
    got = Engine(ws).predict([p for _, p in photos[:3]], top=1, crop=False)
    assert [g[0][0] for g in got] == litert_logits(src.read_bytes(), inputs).argmax(axis=1).tolist()


# -- refusals --------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.6, 0.95])
def test_truncated_file_is_refused(shared_data, tmp_path, fraction):
    data = (shared_data / "models" / MODELS[0]).read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:int(len(data) * fraction)])  # (only the last 0.5% is the labels' zip)
    with pytest.raises(WeightFileError, match=r"cut\.tflite: .*(truncated|damaged)"):
        read_tflite(path)


def _drop_first_residual_add(m):
    ops = m.subgraphs[0].operators
    add = ops_of(m, OP.ADD)[0]
    producer = {int(o): ops.index(op) for op in ops for o in op.outputs}
    remove_op(m, add, max(add.inputs, key=lambda i: producer[int(i)]))  # keep the projection


def _stride_1_in_block1(m):
    ops_of(m, OP.DEPTHWISE_CONV_2D)[1].builtinOptions.strideH = 1


def _relu6_after_a_projection(m):
    ops_of(m, OP.CONV_2D)[1].builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.RELU6


def _weights_without_quantization(m):
    m.subgraphs[0].tensors[ops_of(m, OP.CONV_2D)[3].inputs[1]].quantization = None


@pytest.mark.parametrize("damage,message", [
    (_drop_first_residual_add, r"where MobileNetV2 alpha=1.0 has block2/residual \(ADD\)"),
    (_stride_1_in_block1, r"block1/depthwise\): stride \(1, 2\), expected \(2, 2\)"),
    (_relu6_after_a_projection, r"block0/project\): fused activation RELU6, expected NONE"),
    (_weights_without_quantization, r"int8 without quantization parameters"),
])
def test_altered_mobilenet_is_refused_naming_the_layer(int8_model, tmp_path, damage, message):
    m = copy.deepcopy(int8_model)
    damage(m)
    path = tmp_path / "altered.tflite"
    path.write_bytes(pack(m))
    with pytest.raises(WeightFileError, match=message):
        read_tflite(path)


def _valid_padding_on_the_stem(model):
    m = copy.deepcopy(model)
    m.subgraphs[0].operators[0].builtinOptions.padding = schema.Padding.VALID
    return m


@pytest.mark.parametrize("alter", [_valid_padding_on_the_stem, lambda m: explicit_padding(m, (1, 1)),
                                   lambda m: explicit_padding(at_size(m, NON_SQUARE), swap_axes=True)],
                         ids=["VALID", "PAD (1, 1)", "97x160, PADs of the other axis"])
def test_padding_other_than_tf_same_is_refused(float_model, tmp_path, alter):
    path = tmp_path / "padded.tflite"
    path.write_bytes(pack(alter(float_model)))
    with pytest.raises(WeightFileError, match=r"\(stem\): padding is not TensorFlow 'same'"):
        read_tflite(path)


def test_another_network_is_refused(tmp_path):
    path = tmp_path / "other.tflite"
    path.write_bytes(pack(tiny_other_network()))
    with pytest.raises(WeightFileError, match=r"other\.tflite: not a MobileNetV2"):
        convert(path, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


# -- a non-square input ------------------------------------------------------------------

@pytest.mark.parametrize("variant", [lambda m: m, explicit_padding], ids=["SAME", "explicit padding"])
def test_a_non_square_float_model_is_height_by_width(variant, float_model, photo_paths, tmp_path):
    """The size recorded as the input tensor has it, [1, height, width, 3]; the logits of a
    batch and of photos resized to it (crop=False) as LiteRT's; explicit PADs of TF 'same'
    for each axis's own size accepted."""
    src = tmp_path / "non_square.tflite"
    src.write_bytes(pack(variant(at_size(float_model, NON_SQUARE))))
    ws = read_tflite(src)
    assert tuple(ws.size) == NON_SQUARE and ws.classes == 1001
    engine = Engine(ws)
    assert engine.preprocess(np.zeros((300, 200, 3), np.uint8)).shape == NON_SQUARE + (3,)
    x = np.random.default_rng(3).uniform(-1, 1, (2,) + NON_SQUARE + (3,)).astype(np.float32)
    close(engine.forward(x), litert_logits(src.read_bytes(), x), rel=1e-4)
    pixels = [np.asarray(Image.open(p).convert("RGB").resize(NON_SQUARE[::-1], Image.BILINEAR))
              for p in photo_paths[:3]]
    want = litert_logits(src.read_bytes(), [(p * ws.scale + ws.offset).astype(np.float32) for p in pixels])
    close(probabilities(engine.predict(photo_paths[:3], top=1001, crop=False), 1001), softmax(want), rel=1e-3)


def test_a_non_square_quantized_model_with_a_pool_window(shared_data, photos, tmp_path):
    """The uint8 model pools with AVERAGE_POOL_2D, whose 4x5 window must be read as the 4x5
    last feature map. The reference is LiteRT on the test's dequantized graph (as above):
    away from 224 the integer graph's uint8 logits saturate."""
    quantized = at_size(unpack((shared_data / "models" / MODELS[1]).read_bytes()), NON_SQUARE)
    src = tmp_path / "non_square.tflite"
    src.write_bytes(pack(quantized))
    ws = read_tflite(src)
    assert tuple(ws.size) == NON_SQUARE
    pixels = [np.asarray(Image.fromarray(p).resize(NON_SQUARE[::-1], Image.BILINEAR)) for _, p in photos[:3]]
    x = np.stack([p * ws.scale + ws.offset for p in pixels]).astype(np.float32)
    close(Engine(ws, quantized=False).forward(x), litert_logits(pack(float32_logits_model(quantized)), x), rel=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_a_non_square_quantized_model_runs_in_integer_as_litert_does(name, shared_data, photos, tmp_path):
    """In integer at 97x160 (the uint8 model's pool window the 4x5 last feature map): every
    activation is what LiteRT's reference kernels make, byte for byte."""
    model = at_size(unpack((shared_data / "models" / name).read_bytes()), NON_SQUARE)
    content = pack(model)
    src = tmp_path / "non_square.tflite"
    src.write_bytes(content)
    engine = Engine(read_tflite(src))
    assert engine.quantized
    x = np.asarray(Image.fromarray(photos[0][1]).resize(NON_SQUARE[::-1], Image.BILINEAR))[None]
    interpreter = require("ai_edge_litert.interpreter")
    it = interpreter.Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                 experimental_op_resolver_type=interpreter.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = engine.intermediates(x)
    for layer, op in engine_names(model, engine.arch).items():
        if layer != "softmax":
            want = it.get_tensor(op.outputs[0])
            assert np.array_equal(got[layer].reshape(want.shape), want), layer
