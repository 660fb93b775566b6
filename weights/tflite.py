"""TFLite flatbuffer (.tflite) MobileNetV2 -> WeightSet.

A TFLite MobileNetV2 is a chain of ops: the stem CONV_2D, per block an optional 1x1
CONV_2D (expand), a DEPTHWISE_CONV_2D and a 1x1 CONV_2D (project) followed by an ADD
where the block is residual, the head 1x1 CONV_2D, a global average pool and the
classifier (FULLY_CONNECTED, or a 1x1 CONV_2D as in TF-Slim). BatchNorm is already
folded into each conv's weights and bias, so layers carry a kernel and a bias only.
Weights may be float32, float16 (behind DEQUANTIZE ops), uint8 per tensor (TF1
quantization-aware training) or int8 per channel (post-training quantization); they are
dequantized to float32. Of a model whose activations are quantized too, the integer
weights, biases and every activation's scale and zero point are kept as they are stored
(weights/quantization.py). Kernels are OHWI ([Cout, KH, KW, Cin]; depthwise [1, KH, KW, C],
dense [Cout, Cin]).

Reading happens in two stages: `_parse` copies what is needed out of the flatbuffer (any
damage shows up there), then plain Python checks the graph against `Architecture` op by
op, so a model of another network is refused naming the op that differs.
The `tflite` package (generated flatbuffer code) is needed only to convert such a file.
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnv2engine.arch import ALPHAS, Architecture
from mnv2engine.errors import EngineError, WeightFileError

from .labels import parse_labels
from .quantization import (ActivationQuantization, Quantization, QuantizedLayer, check_activation, check_scales,
                           check_zero_points, layer_inputs, validate_quantization)
from .weightset import Layer, WeightSet

try:
    import tflite
except ImportError:  # reported when a TFLite file is actually converted
    tflite = None

CONV, DEPTHWISE, DENSE, ADD = "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"
STRUCTURAL = (CONV, DEPTHWISE, DENSE, ADD)
POOLS = ("AVERAGE_POOL_2D", "MEAN")
# Ops that carry one activation tensor on without weights: requantization, reshapes,
# explicit padding before a VALID conv, the global pool, the final softmax.
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "PAD", "SOFTMAX") + POOLS

SAME, VALID = 0, 1                       # tflite.Padding
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
DTYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 9: "i1"}   # tflite.TensorType -> numpy
FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8"}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    type: int
    data: np.ndarray | None = None       # constants only, in their stored dtype
    scale: np.ndarray | None = None      # float64 of the stored float32
    zero_point: np.ndarray | None = None  # int64, as stored
    quantized_dimension: int = 0


@dataclass(eq=False)  # ops are compared and hashed by identity
class _Op:
    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)

    def __str__(self):
        return f"op {self.index} ({self.name})"


@dataclass
class _Graph:
    ops: list[_Op]
    tensors: dict[int, _Tensor]
    input: int                           # the subgraph's image input tensor
    producer: dict[int, _Op] = field(init=False)

    def __post_init__(self):
        self.producer = {t: op for op in self.ops for t in op.outputs}


class _Slot(NamedTuple):
    """One op MobileNetV2 must have, in order."""
    layer: str                           # engine layer name ('block3/residual' for an ADD)
    kinds: tuple[str, ...]
    stride: int
    activation: str
    in_size: tuple[int, int] | None = None   # for the 3x3 convs, whose padding is checked


# -- stage 1: the flatbuffer -> plain data --------------------------------------------

def _opcode_name(model, op) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    # builtin_code replaced the int8 deprecated_builtin_code; old files fill only the latter
    value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    return tflite.BUILTIN_OPCODE2NAME.get(value, f"opcode {value}")


def _options(name: str, op) -> dict:
    """The builtin options the checks need, as a dict (flatbuffer defaults where absent)."""
    table = op.BuiltinOptions()
    if name == "SOFTMAX":  # an absent table reads as the schema's beta, 0
        if table is None:
            return {"beta": 0.0}
        o = tflite.SoftmaxOptions()
        o.Init(table.Bytes, table.Pos)
        return {"beta": o.Beta()}
    kinds = {CONV: tflite.Conv2DOptions, DEPTHWISE: tflite.DepthwiseConv2DOptions,
             DENSE: tflite.FullyConnectedOptions, ADD: tflite.AddOptions,
             "AVERAGE_POOL_2D": tflite.Pool2DOptions}
    if name not in kinds:
        return {}
    if table is None:  # an absent table reads as the schema's defaults
        return {"activation": 0, "stride": (0, 0), "padding": SAME, "dilation": (1, 1), "filter": (0, 0),
                "depth_multiplier": 0, "weights_format": 0}
    o = kinds[name]()
    o.Init(table.Bytes, table.Pos)
    out = {"activation": o.FusedActivationFunction()}
    if name in (CONV, DEPTHWISE, "AVERAGE_POOL_2D"):
        out.update(stride=(o.StrideH(), o.StrideW()), padding=o.Padding())
    if name in (CONV, DEPTHWISE):
        out["dilation"] = (o.DilationHFactor(), o.DilationWFactor())
    if name == DEPTHWISE:
        out["depth_multiplier"] = o.DepthMultiplier()
    if name == "AVERAGE_POOL_2D":
        out["filter"] = (o.FilterHeight(), o.FilterWidth())
    if name == DENSE:
        out["weights_format"] = o.WeightsFormat()
    return out


def _buffer_bytes(model, buf: bytes, index: int) -> bytes | None:
    """A buffer's bytes: inline in the flatbuffer, or after it (offset/size, files > 2 GB)."""
    b = model.Buffers(index)
    if b is None:
        return None
    if b.DataLength():
        return b.DataAsNumpy().tobytes()
    if b.Offset() > 1:
        return buf[b.Offset():b.Offset() + b.Size()]
    return None


def _tensor(model, buf: bytes, sg, index: int, constant: bool) -> _Tensor:
    t = sg.Tensors(index)
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    out = _Tensor(name=(t.Name() or b"").decode("utf-8", "replace"), shape=shape, type=t.Type())
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        out.scale = q.ScaleAsNumpy().astype(np.float64)
        out.zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(1, np.int64)
        out.quantized_dimension = q.QuantizedDimension()
    raw = _buffer_bytes(model, buf, t.Buffer()) if constant and t.Buffer() > 0 else None
    if raw is not None:
        if out.type not in DTYPES:
            raise WeightFileError(f"tensor {out.name}: unsupported constant type {out.type}")
        dtype = np.dtype(DTYPES[out.type])
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(raw) != need:
            raise WeightFileError(f"tensor {out.name}: {len(raw)} bytes of data for shape {shape} "
                                  f"({need} bytes): damaged or truncated file")
        out.data = np.frombuffer(raw, dtype).reshape(shape)
    return out


def _parse(buf: bytes) -> _Graph:
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() < 1:
        raise WeightFileError("the model has no subgraph")
    sg = model.Subgraphs(0)
    if sg.InputsLength() != 1:
        raise WeightFileError(f"the model has {sg.InputsLength()} inputs, expected one image")
    ops, tensors, produced = [], {}, set()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        name = _opcode_name(model, op)
        inputs = [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else []
        outputs = [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops.append(_Op(i, name, inputs, outputs, _options(name, op)))
        produced.update(outputs)
    graph_input = int(sg.Inputs(0))
    for ti in {t for op in ops for t in op.inputs + op.outputs if t >= 0} | {graph_input}:
        if not 0 <= ti < sg.TensorsLength():
            raise WeightFileError(f"an op refers to tensor {ti}, but there are {sg.TensorsLength()}")
        tensors[ti] = _tensor(model, buf, sg, ti, constant=ti not in produced and ti != graph_input)
    return _Graph(ops, tensors, graph_input)


def _load(path) -> _Graph:
    if tflite is None:
        raise WeightFileError(f"{path}: converting a TFLite file needs the tflite package "
                              "(pip install 'mnv2engine[tflite]')")
    buf = Path(path).read_bytes()
    if len(buf) < 8 or not tflite.Model.ModelBufferHasIdentifier(buf, 0):
        raise WeightFileError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return _parse(buf)
    except WeightFileError as e:
        raise WeightFileError(f"{path}: {e}") from None
    except struct.error:
        raise WeightFileError(f"{path}: truncated or damaged TFLite file: its offsets point past "
                              f"its end ({len(buf)} bytes)") from None
    except Exception as e:  # the generated accessors raise assorted errors on damaged offsets
        raise WeightFileError(f"{path}: damaged or truncated TFLite file "
                              f"({type(e).__name__}: {e})") from None


# -- stage 2: the graph -> MobileNetV2 layers -----------------------------------------

def _engine_shape(op: _Op, w: tuple) -> tuple:
    """The engine's kernel shape for a TFLite weight shape (see `_to_engine_layout`)."""
    if op.name == DEPTHWISE:
        return w[1:]
    if op.name == DENSE:
        return w[::-1]
    cout, kh, kw, cin = w
    return (cin, cout) if (kh, kw) == (1, 1) else (kh, kw, cin, cout)


def _to_engine_layout(op: _Op, w: np.ndarray) -> np.ndarray:
    if op.name == DEPTHWISE:
        return w[0]                       # [1, 3, 3, C] -> [3, 3, C]
    if op.name == DENSE:
        return w.T                        # [Cout, Cin] -> [Cin, Cout]
    if w.shape[1:3] == (1, 1):
        return w[:, 0, 0, :].T            # [Cout, 1, 1, Cin] -> [Cin, Cout]
    return w.transpose(1, 2, 3, 0)        # OHWI -> HWIO


def _weight_shape(g: _Graph, op: _Op) -> tuple:
    """A conv's weight shape, checked for rank: a graph of another network fails here clearly."""
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        raise WeightFileError(f"{op} has no weight tensor")
    shape = g.tensors[op.inputs[1]].shape
    if len(shape) != (2 if op.name == DENSE else 4) or (op.name == DEPTHWISE and shape[0] != 1):
        raise WeightFileError(f"{op}: weight shape {shape} is not a MobileNetV2 kernel")
    return shape


def _infer(g: _Graph, convs: list[_Op], size) -> Architecture:
    """The width multiplier and class count whose kernel shapes match every conv, in order."""
    shapes = [_engine_shape(op, _weight_shape(g, op)) for op in convs]
    for alpha in ALPHAS:
        n = len(Architecture(alpha=alpha, size=size, classes=0).tensor_shapes())
        if len(shapes) in (n, n + 1):
            arch = Architecture(alpha=alpha, size=size, classes=shapes[-1][-1] if len(shapes) > n else 0)
            if shapes == list(arch.tensor_shapes().values()):
                return arch
    # name the first difference from the width multiplier with the model's stem width
    stem = shapes[0][-1] if shapes else None
    alpha = next((a for a in ALPHAS if Architecture(alpha=a, classes=0).stem_channels == stem), 1.0)
    n = len(Architecture(alpha=alpha, size=size, classes=0).tensor_shapes())
    arch = Architecture(alpha=alpha, size=size, classes=shapes[-1][-1] if len(shapes) > n else 0)
    for op, shape, (layer, want) in zip(convs, shapes, arch.tensor_shapes().items()):
        if shape != want:
            raise WeightFileError(f"not a MobileNetV2: {op} has kernel {shape} (engine layout) where "
                                  f"MobileNetV2 alpha={alpha} has {layer} {want}")
    raise WeightFileError(f"not a MobileNetV2: {len(convs)} conv/dense ops, MobileNetV2 alpha={alpha} "
                          f"has {n} (headless) or {n + 1}")


def _slots(arch: Architecture) -> list[_Slot]:
    """The op sequence MobileNetV2 must have."""
    out = [_Slot("stem", (CONV,), 2, "RELU6", arch.size)]
    for b in arch.blocks:
        if b.expands:
            out.append(_Slot(f"{b.name}/expand", (CONV,), 1, "RELU6"))
        out.append(_Slot(f"{b.name}/depthwise", (DEPTHWISE,), b.stride, "RELU6", b.in_size))
        out.append(_Slot(f"{b.name}/project", (CONV,), 1, "NONE"))
        if b.use_residual:
            out.append(_Slot(f"{b.name}/residual", (ADD,), 1, "NONE"))
    out.append(_Slot("head", (CONV,), 1, "RELU6"))
    if not arch.headless:
        out.append(_Slot("classifier", (DENSE, CONV), 1, "NONE"))
    return out


def _trace(g: _Graph, tensor: int) -> tuple[_Op | None, list[_Op]]:
    """The structural op whose output reaches `tensor` (None: the image input), and the
    pass-through ops on the way."""
    between = []
    while tensor != g.input:
        op = g.producer.get(tensor)
        if op is None:
            raise WeightFileError(f"tensor {g.tensors[tensor].name} is neither computed nor the input")
        if op.name in STRUCTURAL:
            return op, between[::-1]
        if op.name not in PASS_THROUGH or not op.inputs or len(between) > len(g.ops):
            raise WeightFileError(f"{op} is not part of a MobileNetV2")
        between.append(op)
        tensor = op.inputs[0]
    return None, between[::-1]


def _check_padding(g: _Graph, arch: Architecture, op: _Op, slot: _Slot, between: list[_Op]):
    """TF 'same' padding: either the conv's own SAME, or an explicit PAD before a VALID conv
    (as Keras's ZeroPadding2D converts) that pads exactly what 'same' would."""
    layer = slot.layer
    pads = [p for p in between if p.name == "PAD"]
    if slot.in_size is None:  # 1x1: padding changes nothing, unless a PAD op grows the feature map
        if pads:
            raise WeightFileError(f"{pads[0]} before {op} ({layer}): a 1x1 conv is not padded in MobileNetV2")
        return
    if op.options["padding"] == SAME and not pads:
        return
    want = np.array([[0, 0], *np.reshape(arch.pads(slot.in_size, slot.stride), (2, 2)), [0, 0]])
    if op.options["padding"] == VALID and len(pads) == 1 and len(pads[0].inputs) > 1:
        got = g.tensors[pads[0].inputs[1]].data
        if got is not None and got.size == 8 and np.array_equal(got.reshape(4, 2), want):
            return
    raise WeightFileError(f"{op} ({layer}): padding is not TensorFlow 'same' "
                          f"(expected SAME, or a PAD of {want[1:3].tolist()} before a VALID conv)")


def _check_op(g: _Graph, arch: Architecture, op: _Op, slot: _Slot, between: list[_Op]):
    """Fused activation, stride, dilation and padding of one layer; where the global pool sits."""
    layer, _, stride, activation, _ = slot
    got = ACTIVATIONS.get(op.options["activation"], str(op.options["activation"]))
    if got != activation:
        raise WeightFileError(f"{op} ({layer}): fused activation {got}, expected {activation}")
    pools = [p for p in between if p.name in POOLS]
    if layer == "classifier":
        _check_pool(g, arch, op, pools)
    elif pools:
        raise WeightFileError(f"{pools[0]} before {op} ({layer}): MobileNetV2 pools only before the classifier")
    if op.name in (CONV, DEPTHWISE):
        if op.options["stride"] != (stride, stride):
            raise WeightFileError(f"{op} ({layer}): stride {op.options['stride']}, expected ({stride}, {stride})")
        if op.options["dilation"] != (1, 1):
            raise WeightFileError(f"{op} ({layer}): dilation {op.options['dilation']}, expected (1, 1)")
    if op.name != ADD:
        _check_padding(g, arch, op, slot, between)
    if op.name == DEPTHWISE and op.options["depth_multiplier"] not in (0, 1):
        raise WeightFileError(f"{op} ({layer}): depth multiplier {op.options['depth_multiplier']}, expected 1")
    if op.name == DENSE and op.options["weights_format"] != 0:
        raise WeightFileError(f"{op} ({layer}): shuffled weights format is not supported")


def _check_pool(g: _Graph, arch: Architecture, op: _Op, pools: list[_Op]):
    """Exactly one pool before the classifier, averaging the whole last feature map."""
    last = tuple(arch.blocks[-1].out_size)
    if len(pools) != 1:
        raise WeightFileError(f"{op} (classifier): expected one global average pool before it, "
                              f"found {len(pools)}")
    p = pools[0]
    if p.name == "AVERAGE_POOL_2D" and (p.options["filter"] != last or p.options["activation"] != 0):
        raise WeightFileError(f"{p}: a {p.options['filter']} average pool, expected a global {last} one")
    if p.name == "MEAN":
        axes = g.tensors[p.inputs[1]].data if len(p.inputs) > 1 else None
        if axes is None or sorted(axes.reshape(-1).tolist()) != [1, 2]:
            raise WeightFileError(f"{p}: a mean over axes {axes}, expected the spatial axes [1, 2]")


def _walk(g: _Graph, arch: Architecture) -> dict[str, _Op]:
    """Match the structural ops one by one to MobileNetV2's layers, following the data
    from op to op; name the first that differs. Returns every layer's op, the residual
    ADDs ('block3/residual') among them."""
    for op in g.ops:
        if op.name not in STRUCTURAL + PASS_THROUGH:
            raise WeightFileError(f"not a MobileNetV2: {op} is not one of its ops")
        if op.name == "SOFTMAX" and op.options["beta"] != 1.0:
            raise WeightFileError(f"{op}: a softmax with beta {op.options['beta']!r}; mnv2engine's has beta 1")
    structural = [op for op in g.ops if op.name in STRUCTURAL]
    slots = _slots(arch)
    layers, prev, block, block_input = {}, None, None, None
    for i, slot in enumerate(slots):
        layer = slot.layer
        if i >= len(structural):
            raise WeightFileError(f"not a MobileNetV2: the graph ends before {layer}")
        op = structural[i]
        if op.name not in slot.kinds:
            raise WeightFileError(f"not a MobileNetV2: {op} where MobileNetV2 alpha={arch.alpha} has "
                                  f"{layer} ({' or '.join(slot.kinds)})")
        if layer.split("/")[0] != block:
            block, block_input = layer.split("/")[0], prev
        if op.name == ADD:
            sources = {_trace(g, t)[0] for t in op.inputs}
            if len(op.inputs) != 2 or sources != {prev, block_input}:
                raise WeightFileError(f"{op} ({layer}): expected the sum of the block's input and its projection")
            between = []
        else:
            src, between = _trace(g, op.inputs[0])
            if src is not prev:
                raise WeightFileError(f"{op} ({layer}) takes its input from {src or 'the image'}, "
                                      f"expected {prev or 'the image'}")
        layers[layer] = op
        _check_op(g, arch, op, slot, between)
        prev = op
    if len(structural) > len(slots):
        raise WeightFileError(f"not a MobileNetV2: {structural[len(slots)]} after the last layer")
    return layers


def _dequantize(t: _Tensor) -> np.ndarray:
    """float32 values of a constant: (q - zero_point) * scale, per channel along the
    quantized dimension where there are several scales."""
    if t.type in (FLOAT32, FLOAT16):
        return t.data.astype(np.float32)
    if t.type not in (UINT8, INT8, INT32):
        raise WeightFileError(f"tensor {t.name}: unsupported weight type {TYPE_NAMES.get(t.type, t.type)}")
    if t.scale is None:
        raise WeightFileError(f"tensor {t.name}: {TYPE_NAMES[t.type]} without quantization parameters")
    shape = [1] * t.data.ndim
    if t.scale.size > 1:
        if t.data.ndim <= t.quantized_dimension or t.data.shape[t.quantized_dimension] != t.scale.size:
            raise WeightFileError(f"tensor {t.name}: {t.scale.size} scales for shape {t.data.shape} "
                                  f"along dimension {t.quantized_dimension}")
        shape[t.quantized_dimension] = -1
    zero_point = (t.zero_point if t.zero_point.size == t.scale.size else t.zero_point[:1]).astype(np.float64)
    return ((t.data - zero_point.reshape(shape)) * t.scale.reshape(shape)).astype(np.float32)


def _constant(g: _Graph, ti: int) -> _Tensor:
    """A weight tensor, following a DEQUANTIZE op back to its stored (float16) constant."""
    t = g.tensors[ti]
    op = g.producer.get(ti)
    if t.data is None and op is not None and op.name == "DEQUANTIZE":
        t = g.tensors[op.inputs[0]]
    if t.data is None:
        raise WeightFileError(f"tensor {t.name}: expected constant weights")
    return t


def _layer(g: _Graph, op: _Op, cout: int) -> Layer:
    kernel = _to_engine_layout(op, _dequantize(_constant(g, op.inputs[1])))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = _dequantize(_constant(g, op.inputs[2])) if has_bias else np.zeros(cout, np.float32)
    if bias.shape != (cout,):
        raise WeightFileError(f"{op}: bias of shape {bias.shape}, expected ({cout},)")
    return Layer(kernel=np.ascontiguousarray(kernel), bias=np.ascontiguousarray(bias))


# -- the integer arithmetic of a quantized model -----------------------------------------

def _activation(t: _Tensor, layer: str) -> ActivationQuantization:
    """The per-tensor quantization of an activation tensor, checked."""
    what = f"tensor {t.name} ({layer})"
    if t.type not in (UINT8, INT8):
        raise WeightFileError(f"{what}: {TYPE_NAMES.get(t.type, t.type)} in a model whose activations are "
                              "quantized, expected int8 or uint8")
    if t.scale is None or t.scale.size != 1 or t.zero_point.size != 1:
        raise WeightFileError(f"{what}: expected one scale and one zero point, got "
                              f"{0 if t.scale is None else t.scale.size} and "
                              f"{0 if t.zero_point is None else t.zero_point.size}")
    a = ActivationQuantization(TYPE_NAMES[t.type], float(np.float32(t.scale[0])), int(t.zero_point[0]))
    check_activation(what, a)
    return a


def _scales(t: _Tensor, what: str, channels: int, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """A constant's scales (float32) and zero points (int64), one per tensor or one per
    output channel (`dimension` of the stored tensor), checked."""
    if t.scale is None:
        raise WeightFileError(f"{what}: {TYPE_NAMES.get(t.type, t.type)} without quantization parameters")
    scale, zero_point = t.scale.astype(np.float32), t.zero_point
    if scale.size not in (1, channels) or scale.size > 1 and t.quantized_dimension != dimension:
        raise WeightFileError(f"{what}: {scale.size} scales along dimension {t.quantized_dimension} of shape "
                              f"{t.shape}, expected one, or one per output channel ({channels}) along "
                              f"dimension {dimension}")
    if zero_point.size == 1:
        zero_point = np.repeat(zero_point, scale.size)
    if zero_point.size != scale.size:
        raise WeightFileError(f"{what}: {zero_point.size} zero points for {scale.size} scales")
    check_scales(what, scale)
    return scale, zero_point


def _quantized_layer(g: _Graph, op: _Op, layer: str, input_scale: float) -> QuantizedLayer:
    """A layer's integer weights and int32 bias as stored, the kernel in the engine's layout."""
    w = _constant(g, op.inputs[1])
    what = f"tensor {w.name} ({layer} weights)"
    if w.type not in (UINT8, INT8):
        raise WeightFileError(f"{what}: {TYPE_NAMES.get(w.type, w.type)} weights in a model whose activations "
                              "are quantized, expected int8 or uint8")
    cout = _engine_shape(op, w.shape)[-1]
    kernel_scale, kernel_zero_point = _scales(w, what, cout, 3 if op.name == DEPTHWISE else 0)
    check_zero_points(what, TYPE_NAMES[w.type], kernel_zero_point)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b = _constant(g, op.inputs[2])
        what = f"tensor {b.name} ({layer} bias)"
        if b.type != INT32:
            raise WeightFileError(f"{what}: {TYPE_NAMES.get(b.type, b.type)}, expected an int32 bias")
        bias_scale, bias_zero_point = _scales(b, what, cout, 0)
        if bias_zero_point.any():
            raise WeightFileError(f"{what}: zero point {int(bias_zero_point[bias_zero_point != 0][0])}, "
                                  "an int32 bias has zero point 0")
        bias = b.data.astype(np.int32)
    else:  # no bias: zeros, at the scale an int32 bias of this layer would have
        bias = np.zeros(cout, np.int32)
        bias_scale = (np.float64(input_scale) * kernel_scale.astype(np.float64)).astype(np.float32)
    return QuantizedLayer(kernel=np.ascontiguousarray(_to_engine_layout(op, w.data)), kernel_scale=kernel_scale,
                          kernel_zero_point=kernel_zero_point, bias=np.ascontiguousarray(bias), bias_scale=bias_scale)


def _quantization(g: _Graph, arch: Architecture, ops: dict[str, _Op]) -> Quantization | None:
    """The integer arithmetic the file defines, where its activations are quantized; None for
    float activations (a float model, or one whose weights alone are quantized)."""
    stem_input = g.tensors[ops["stem"].inputs[0]]
    if stem_input.type not in (UINT8, INT8):
        return None
    acts = {"input": _activation(stem_input, "input")}
    acts.update({name: _activation(g.tensors[op.outputs[0]], name) for name, op in ops.items()})
    name_of = {op: name for name, op in ops.items()}
    inputs = layer_inputs(arch)
    # (op, layer, tensor it reads, the activation that tensor carries)
    reads = [(op, name, op.inputs[0], inputs[name]) for name, op in ops.items()
             if op.name != ADD and name not in ("stem", "classifier")]
    reads += [(op, name, t, name_of.get(_trace(g, t)[0], "input")) for name, op in ops.items()
              if op.name == ADD for t in op.inputs]
    if "classifier" in ops:
        classifier = ops["classifier"]
        pool = next(p for p in _trace(g, classifier.inputs[0])[1] if p.name in POOLS)
        acts["pool"] = _activation(g.tensors[pool.outputs[0]], "pool")
        if pool.name != {"int8": "MEAN", "uint8": "AVERAGE_POOL_2D"}[acts["pool"].dtype]:
            raise WeightFileError(f"{pool}: the global pool of a file quantized to {acts['pool'].dtype} is "
                                  f"{pool.name}; mnv2engine runs int8's as MEAN and uint8's as AVERAGE_POOL_2D, "
                                  "whose roundings differ")
        reads += [(classifier, "classifier", classifier.inputs[0], "pool"), (pool, "pool", pool.inputs[0], "head")]
        softmaxes = [op for op in g.ops if op.name == "SOFTMAX"]
        for op in softmaxes:
            if len(softmaxes) > 1 or _trace(g, op.inputs[0])[0] is not classifier:
                raise WeightFileError(f"{op}: a quantized MobileNetV2 has at most one softmax, after the classifier")
            acts["softmax"] = _activation(g.tensors[op.outputs[0]], "softmax")
            reads.append((op, "softmax", op.inputs[0], "classifier"))
    for op, name, t, source in reads:
        got = _activation(g.tensors[t], name)
        if got != acts[source]:
            raise WeightFileError(f"{op} ({name}) reads tensor {g.tensors[t].name} quantized as {got}, but "
                                  f"{source} produces {acts[source]}: a requantization between layers, "
                                  "which mnv2engine does not keep")
    layers = {name: _quantized_layer(g, op, name, acts[inputs[name]].scale)
              for name, op in ops.items() if op.name != ADD}
    return Quantization(layers=layers, activations=acts)


def _preprocessing(t: _Tensor) -> tuple[np.ndarray, np.ndarray]:
    """scale, offset mapping a pixel 0..255 to the network's input, from the input's
    quantization: uint8 q = pixel, int8 q = pixel - 128, x = (q - zero_point) * scale.
    A float input gets the Keras/TF convention x = pixel / 127.5 - 1."""
    if t.type == FLOAT32:
        return np.full(3, 1 / 127.5, np.float32), np.full(3, -1.0, np.float32)
    if t.type not in (UINT8, INT8) or t.scale is None or t.scale.size != 1:
        raise WeightFileError(f"input tensor {t.name}: expected float32, or uint8/int8 with one scale, "
                              f"got {TYPE_NAMES.get(t.type, t.type)}")
    s, z = float(t.scale[0]), float(t.zero_point[0]) + (128 if t.type == INT8 else 0)
    return np.full(3, s, np.float32), np.full(3, -z * s, np.float32)


def _embedded_labels(path, classes: int) -> list[str] | None:
    """Labels packed in the model: TFLite Metadata appends its associated files (the label
    map among them) as a zip archive. Taken only when one text file has a label per class."""
    try:
        if not classes or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            found = []
            for name in z.namelist():
                if name.endswith(".txt"):
                    found.append(parse_labels(z.read(name).decode("utf-8")))
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    fits = [lines for lines in found if len(lines) == classes]
    return fits[0] if len(fits) == 1 else None


def read_tflite(path) -> WeightSet:
    g = _load(path)
    image = g.tensors[g.input]
    if len(image.shape) != 4 or image.shape[3] != 3:
        raise WeightFileError(f"{path}: input shape {image.shape}, expected an image [1, H, W, 3]")
    convs = [op for op in g.ops if op.name in (CONV, DEPTHWISE, DENSE)]
    try:
        arch = _infer(g, convs, image.shape[1:3])
        shapes = arch.tensor_shapes()
        ops = _walk(g, arch)
        quantization = _quantization(g, arch, ops)  # first: its checks name the layer of a bad scale
        weights = {name: _layer(g, op, shapes[name][-1]) for name, op in ops.items() if op.name != ADD}
        scale, offset = _preprocessing(image)
        if quantization is not None:
            validate_quantization(quantization, arch, weights)
    except EngineError as e:  # WeightFileError, or an architecture error such as a too small input
        raise WeightFileError(f"{path}: {e}") from None
    return WeightSet(alpha=arch.alpha, size=arch.size, classes=arch.classes, padding="same",
                     layers=weights, scale=scale, offset=offset, quantization=quantization,
                     labels=_embedded_labels(path, arch.classes), source=f"tflite {path}")
