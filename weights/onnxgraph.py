"""ONNX MobileNetV2 graphs -> WeightSet, read with the `onnx` package.

An ONNX file is a graph, not a list of named tensors, so it is read by walking the graph
in its (topological) node order and matching it against Table 2: the stem conv, each
block's [expand], depthwise and project convs, the residual Adds, the head conv, the
pooling and the classifier. Each conv may be followed by a BatchNormalization (torch.onnx
keeps it at opset 7 or without constant folding, and folds it otherwise) and by ReLU6 as
Clip(0, 6) (bounds as attributes before opset 11, as inputs after). Pooling is
GlobalAveragePool or ReduceMean over H and W; the classifier Gemm, MatMul (+ Add), or a
1x1 Conv on the pooled features (as MXNet Gluon exports it), around Flatten/Reshape.
Where the graph does not fit, the error names the first node that doesn't. Convs are OIHW.
The ONNX model zoo's mobilenetv2-7 / -12 come from Gluon, whose block 0 has a 1x1
expansion conv the paper's network does not: read as Architecture(block0_expands=True).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnv2engine.arch import ALPHAS, Architecture
from mnv2engine.errors import WeightFileError

from .weightset import BatchNorm, Layer, WeightSet, from_oihw, settled_size

PASS_THROUGH = {"Flatten", "Reshape", "Squeeze"}  # [N, C, 1, 1] -> [N, C]: on the pooled features only
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Cast", "Slice"}  # a Reshape's target shape


@dataclass
class Found:
    """One conv or dense layer of the graph, with what follows it."""
    node: object                 # the Conv / Gemm / MatMul NodeProto
    input: str                   # the value it reads
    kernel: np.ndarray           # OIHW for a conv, [in, out] for a dense layer
    bias: np.ndarray | None
    group: int = 1
    stride: int = 1
    pads: tuple = (0, 0, 0, 0)
    auto_pad: str = "NOTSET"
    bn: BatchNorm | None = None
    relu6: bool = False
    residual: bool = False
    after_pool: bool = False


def describe(node) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def load_graph(path):
    """The graph, its initializers as arrays, and onnx.numpy_helper."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightFileError(f"{path}: converting an ONNX file needs the onnx package "
                              "(pip install 'mnv2engine[onnx]')") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and others
        raise WeightFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model.graph, consts, numpy_helper


def _attrs(node) -> dict:
    from onnx import helper
    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def walk(path, graph, consts, numpy_helper) -> list[Found]:
    """The graph's conv and dense layers in order, each with its BN, ReLU6 and residual.

    `current` is the value the next layer must read: every node either is plumbing
    (constants, a Reshape's target shape), passes `current` through, or extends the
    chain; anything else is the first node that does not fit."""
    alias = {}          # a value -> the value it passes on unchanged
    found: list[Found] = []
    current = None
    pooled = False

    def name(v):
        while v in alias:
            v = alias[v]
        return v

    def const(v, node):
        if v not in consts:
            raise WeightFileError(f"{path}: {describe(node)}: expected a constant for input {v!r}")
        return consts[v]

    def optional(ins, i, node):
        return const(ins[i], node) if len(ins) > i and ins[i] else None

    for node in graph.node:
        op, ins, a = node.op_type, [name(v) for v in node.input], _attrs(node)
        if op == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
            continue
        if op in SHAPE_OPS and (op == "Shape" or current not in ins):
            continue
        if current is None:  # the graph's input
            current = ins[0]
        last = found[-1] if found else None
        if op in ("Conv", "Gemm", "MatMul") and ins[0] == current:
            if op == "Conv":
                if any(d != 1 for d in a.get("dilations", [1, 1])):
                    raise WeightFileError(f"{path}: {describe(node)}: dilations {a['dilations']}, where "
                                          "MobileNetV2 has none")
                stride = a.get("strides", [1, 1])
                f = Found(node, current, const(ins[1], node), optional(ins, 2, node), group=a.get("group", 1),
                          stride=stride[0] if len(set(stride)) == 1 else tuple(stride),
                          pads=tuple(a.get("pads", (0, 0, 0, 0))), auto_pad=a.get("auto_pad", "NOTSET"),
                          after_pool=pooled)
            elif op == "Gemm":
                if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                    raise WeightFileError(f"{path}: {describe(node)}: a Gemm with alpha, beta or transA set")
                w = const(ins[1], node)
                f = Found(node, current, w.T if a.get("transB", 0) else w, optional(ins, 2, node), after_pool=pooled)
            else:
                f = Found(node, current, const(ins[1], node), None, after_pool=pooled)
            found.append(f)
        elif op in ("Identity", "Dropout") and ins[0] == current or op in PASS_THROUGH and pooled and ins[0] == current:
            alias[node.output[0]] = current
            continue
        elif op == "BatchNormalization" and last and ins[0] == current and last.bn is None and not last.relu6:
            last.bn = BatchNorm(*(const(v, node) for v in ins[1:5]), float(a.get("epsilon", 1e-5)))
        elif op == "Clip" and last and ins[0] == current and not last.relu6:
            lo, hi = a.get("min", optional(ins, 1, node)), a.get("max", optional(ins, 2, node))
            if lo is None or hi is None or (float(lo), float(hi)) != (0.0, 6.0):
                raise WeightFileError(f"{path}: {describe(node)}: Clip({lo}, {hi}), where MobileNetV2's "
                                      "ReLU6 is Clip(0, 6)")
            last.relu6 = True
        elif op == "Add" and last and current in ins and len(ins) == 2:
            other = ins[1] if ins[0] == current else ins[0]
            if other in consts and last.node.op_type == "MatMul" and last.bias is None:
                last.bias = np.asarray(consts[other]).reshape(-1)
            elif len(found) >= 3 and other == found[-3].input and not last.residual:
                last.residual = True  # x + project(depthwise(expand(x)))
            else:
                raise WeightFileError(f"{path}: {describe(node)} does not fit a MobileNetV2: an Add that is "
                                      f"neither a block's residual nor a bias (after {describe(last.node)})")
        elif op in ("GlobalAveragePool", "ReduceMean") and last and ins[0] == current and not pooled:
            axes = a.get("axes", optional(ins, 1, node))
            if op == "ReduceMean" and (axes is None or sorted(int(x) % 4 for x in axes) != [2, 3]):
                raise WeightFileError(f"{path}: {describe(node)}: a mean over axes {axes}, where MobileNetV2 "
                                      "pools over H and W (2, 3)")
            pooled = True
        else:
            after = f" (after {describe(last.node)})" if last else ""
            raise WeightFileError(f"{path}: {describe(node)} does not fit a MobileNetV2{after}")
        current = node.output[0]
    return found


def _expected(arch: Architecture) -> list[tuple[str, tuple, int, int, bool, bool]]:
    """(engine layer, OIHW or [in, out] shape, group, stride, relu6, residual) in graph order."""
    out = [("stem", (arch.stem_channels, 3, 3, 3), 1, 2, True, False)]
    for b in arch.table2_blocks:  # the stem, above, is Gluon's pass-through step
        if b.expands:
            out.append((f"{b.name}/expand", (b.hidden, b.cin, 1, 1), 1, 1, True, False))
        out.append((f"{b.name}/depthwise", (b.hidden, 1, 3, 3), b.hidden, b.stride, True, False))
        out.append((f"{b.name}/project", (b.cout, b.hidden, 1, 1), 1, 1, False, b.use_residual))
    out.append(("head", (arch.last_channels, arch.blocks[-1].cout, 1, 1), 1, 1, True, False))
    if not arch.headless:
        out.append(("classifier", (arch.last_channels, arch.classes), 1, 1, False, False))
    return out


def _dense(f: Found) -> np.ndarray | None:
    """A classifier's [in, out] kernel: Gemm/MatMul as is, a 1x1 conv after pooling from OIHW."""
    if f.node.op_type == "Conv":
        return f.kernel[:, :, 0, 0].T if f.after_pool and f.kernel.ndim == 4 and f.kernel.shape[2:] == (1, 1) else None
    return f.kernel if f.kernel.ndim == 2 else None


def _mismatch(f: Found, want) -> str | None:
    """Why layer `f` is not the expected one; None if it is."""
    name, shape, group, stride, relu6, residual = want
    if name == "classifier":
        kernel = _dense(f)
        got = None if kernel is None else kernel.shape
    else:
        got = f.kernel.shape if f.node.op_type == "Conv" and not f.after_pool else None
    if got != shape:
        return f"{'weights of shape ' + str(got) if got else 'this layer'} where MobileNetV2's {name} has {shape}"
    if name != "classifier" and (f.group, f.stride) != (group, stride):
        return f"group {f.group}, stride {f.stride} where MobileNetV2's {name} has group {group}, stride {stride}"
    if f.relu6 != relu6:
        return f"{'a' if f.relu6 else 'no'} ReLU6 after it, where MobileNetV2's {name} has {'one' if relu6 else 'none'}"
    if f.residual != residual:
        return f"{'a' if f.residual else 'no'} residual Add, where MobileNetV2's {name} has {'one' if residual else 'none'}"
    return None


def _padding(path, found: list[Found]) -> str:
    """'symmetric' for pads of 1 on every 3x3 conv (torch), 'same' for SAME_UPPER (TF)."""
    conventions = set()
    for f in found:
        if f.node.op_type != "Conv":
            continue
        if f.kernel.shape[2:] != (3, 3):  # a 1x1 conv: any pad grows its output, which MobileNetV2's never does
            if any(f.pads):
                raise WeightFileError(f"{path}: {describe(f.node)}: padding pads={list(f.pads)} on a 1x1 conv, "
                                      "which MobileNetV2 does not pad")
            continue
        if f.auto_pad == "SAME_UPPER":
            conventions.add("same")
        elif f.auto_pad in ("NOTSET", "") and f.pads == (1, 1, 1, 1):
            conventions.add("symmetric")
        else:
            raise WeightFileError(f"{path}: {describe(f.node)}: padding pads={list(f.pads)} auto_pad={f.auto_pad}; "
                                  "MobileNetV2 pads a 3x3 conv by 1 on each side (torch) or SAME_UPPER (TF)")
    if len(conventions) != 1:
        raise WeightFileError(f"{path}: the 3x3 convs mix padding conventions {sorted(conventions)}")
    return conventions.pop()


def read_onnx(path, size=None) -> WeightSet:
    """An ONNX MobileNetV2 as a WeightSet; alpha and classes follow from the shapes, the
    input size from the graph's input where it is fixed."""
    graph, consts, numpy_helper = load_graph(path)
    found = walk(path, graph, consts, numpy_helper)
    if not found or found[0].node.op_type != "Conv":
        raise WeightFileError(f"{path}: not a MobileNetV2: no convolution at the start of the graph")
    tail = [f for f in found if f.after_pool]
    if len(tail) > 1:
        raise WeightFileError(f"{path}: {describe(tail[1].node)} does not fit a MobileNetV2: "
                              "one classifier layer after the pooling, found more")
    classes = 0
    if tail:
        kernel = _dense(tail[0])
        if kernel is None:
            raise WeightFileError(f"{path}: {describe(tail[0].node)} does not fit a MobileNetV2 classifier")
        classes = kernel.shape[1]
    best = None
    for alpha, gluon in ((a, g) for a in ALPHAS for g in (False, True)):
        arch = Architecture(alpha=alpha, classes=classes, block0_expands=gluon)
        expected = _expected(arch)
        for i, (f, want) in enumerate(zip(found, expected)):
            why = _mismatch(f, want)
            if why:
                break
        else:
            i, why = min(len(found), len(expected)), None
            if len(found) == len(expected):
                return _weightset(path, arch, found, expected, size, graph)
        if best is None or i > best[0]:
            best = (i, why, alpha, expected)
    i, why, alpha, expected = best
    if why is None:
        where = (f"the graph ends after {describe(found[-1].node)}" if i < len(expected)
                 else f"{describe(found[i].node)} is one layer too many")
        raise WeightFileError(f"{path}: not a MobileNetV2: {where} (alpha={alpha} has {len(expected)} layers)")
    raise WeightFileError(f"{path}: not a MobileNetV2: {describe(found[i].node)} has {why} "
                          f"(matched {i} layers of alpha={alpha}, the closest width multiplier)")


def _input_size(graph) -> tuple[int, int] | None:
    """(H, W) of the NCHW graph input where both are fixed numbers, else None (dynamic axes)."""
    inits = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            return int(dims[2].dim_value), int(dims[3].dim_value)
        return None
    return None


def _weightset(path, arch: Architecture, found: list[Found], expected, size, graph) -> WeightSet:
    padding = _padding(path, found)
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, np.float32)
    layers = {}
    for f, (name, *_) in zip(found, expected):
        kernel = _dense(f) if name == "classifier" else from_oihw(name.rsplit("/", 1)[-1], f.kernel)
        bias = f.bias if f.bias is not None or f.bn is not None else np.zeros(kernel.shape[-1])
        bn = None if f.bn is None else BatchNorm(*(f32(getattr(f.bn, k)) for k in BatchNorm.TENSORS), f.bn.epsilon)
        layers[name] = Layer(kernel=f32(kernel), bias=f32(bias), bn=bn)
    size = settled_size(path, _input_size(graph), size)
    ws = WeightSet(alpha=arch.alpha, size=size, classes=arch.classes, padding=padding, layers=layers,
                   source=f"onnx {path}")
    ws.set_torchvision_preprocessing()  # as torchvision and the ONNX model zoo evaluate
    return ws
