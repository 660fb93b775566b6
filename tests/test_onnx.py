"""The ONNX converter against onnxruntime running the same file.

torch.onnx exports of a randomised torchvision-layout MobileNetV2 with dynamic H and W,
in the shapes exporters give: BatchNormalization folded into the convs or kept, ReLU6 as
Clip with attributes (opset 7) or inputs (11+), GlobalAveragePool + Flatten + Gemm or
ReduceMean + MatMul + Add; by the TorchScript exporter and by torch.export's (dynamo=True,
torch's default, which needs onnxscript). Each file is converted once and one engine runs it at every
size; onnxruntime's output on the same file is the reference. Also: a fixed input size higher
than wide, and files that leave attributes to their ONNX defaults or set ones that change the maths.
"""
import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert
from mnv2engine.weights.weightset import IMAGENET_MEAN, IMAGENET_STD

from conftest import close, probabilities, require, softmax

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import ConvBNReLU6, MobileNetV2, randomized

onnx = require("onnx")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Setting 'keep_initializers",
                                        "ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
ort = require("onnxruntime")

SIZES = (96, 160, 224, 113)


class MeanMatMul(MobileNetV2):
    """Pooling and classifier written so that they export as ReduceMean and MatMul + Add."""
    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return x @ self.classifier[1].weight.T + self.classifier[1].bias


def export(model, path, opset, fold=True, dynamic=True, size=96, dynamo=False):
    if dynamo:  # torch.export: H and W as symbolic dimensions (an example batch of 1 would be fixed)
        require("onnxscript")
        dims = {0: torch.export.Dim("n", max=1024), 2: torch.export.Dim("h", min=32, max=2048),
                3: torch.export.Dim("w", min=32, max=2048)}
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(path), dynamo=True, opset_version=opset,
                          input_names=["x"], output_names=["logits"], dynamic_shapes=(dims,), verbose=False)
        return path
    kw = {} if fold else dict(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    h, w = (size, size) if isinstance(size, int) else size
    torch.onnx.export(model, (torch.zeros(1, 3, h, w),), str(path), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None, **kw)
    return path


# name: (model class, alpha, opset, BatchNorm folded, torch.export's exporter)
EXPORTS = {
    "opset17-bn-folded": (MobileNetV2, 0.35, 17, True, False),
    "opset13-bn-kept": (MobileNetV2, 0.35, 13, False, False),
    "opset7-clip-attributes": (MobileNetV2, 0.35, 7, True, False),
    "opset11-reducemean-matmul": (MeanMatMul, 0.5, 11, True, False),
    "opset18-dynamo": (MobileNetV2, 0.35, 18, True, True),
}


def ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module", params=EXPORTS)
def exported(request, tmp_path_factory):
    cls, alpha, opset, fold, dynamo = EXPORTS[request.param]
    path = export(randomized(cls(num_classes=10, width_mult=alpha), seed=opset),
                  tmp_path_factory.mktemp("onnx") / "m.onnx", opset, fold, dynamo=dynamo)
    assert ("BatchNormalization" in ops(path)) == (not fold or opset == 7)  # the shape under test
    return request.param, path


@pytest.mark.slow
def test_one_engine_matches_onnxruntime_at_every_size(exported, tmp_path):
    name, path = exported
    ws = convert(path, tmp_path / "mnv2.h5")
    assert (ws.classes, ws.padding, ws.size) == (10, "symmetric", (224, 224))  # dynamic H, W: the default
    np.testing.assert_allclose(ws.offset, -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    assert (ws.crop, ws.crop_fraction) == ("shorter-side", 0.875)  # the model zoo's: 256, then 224
    engine = Engine.load(tmp_path / "mnv2.h5")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in SIZES:
        x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
        ref = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
        try:
            close(engine.forward(x), ref)
        except AssertionError as e:
            raise AssertionError(f"{name} at {size}: {e}") from None


def test_a_fixed_input_size_is_recorded_and_a_contradiction_refused(tmp_path):
    path = export(randomized(MobileNetV2(num_classes=10, width_mult=0.35), 1), tmp_path / "m.onnx", 17,
                  dynamic=False, size=128)
    assert convert(path, tmp_path / "a.h5").size == (128, 128)
    with pytest.raises(WeightFileError, match="records input size 128x128, but size 96x96"):
        convert(path, tmp_path / "b.h5", size=96)


def test_a_non_square_fixed_size_is_recorded_height_first_and_runs_as_onnxruntime(tmp_path):
    """Exported at 96 high and 128 wide: the file's input is [1, 3, 96, 128]; predict
    feeds that size by default, which onnxruntime (fixed to it) takes as is."""
    path = export(randomized(MobileNetV2(num_classes=10, width_mult=0.35), 2), tmp_path / "m.onnx", 17,
                  dynamic=False, size=(96, 128))
    assert [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 128]
    ws = convert(path, tmp_path / "a.h5")
    assert ws.size == (96, 128)
    with pytest.raises(WeightFileError, match="records input size 96x128, but size 128x96"):
        convert(path, tmp_path / "b.h5", size=(128, 96))
    engine = Engine.load(tmp_path / "a.h5")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = [np.random.default_rng(i).integers(0, 256, shape, np.uint8) for i, shape in enumerate(
        [(150, 218, 3), (218, 150, 3)])]
    x = np.stack([engine.preprocess(image) for image in images])
    assert x.shape == (2, 96, 128, 3)
    ref = np.concatenate([session.run(None, {"x": xi[None].transpose(0, 3, 1, 2)})[0] for xi in x])
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
    close(engine.forward(x), ref)
    close(probabilities(engine.predict(images, top=10), 10), softmax(ref))


def edited(src, dst, edit):
    model = onnx.load(str(src))
    edit(model.graph)
    onnx.save(model, str(dst))
    return dst


# the attribute defaults of the ONNX operator specification, that a file may leave out
ONNX_DEFAULTS = {
    "Conv": dict(strides=[1, 1], pads=[0, 0, 0, 0], group=1, dilations=[1, 1], auto_pad="NOTSET"),
    "BatchNormalization": dict(epsilon=1e-5, momentum=0.9),
    "Gemm": dict(alpha=1.0, beta=1.0, transA=0, transB=0),
    "Flatten": dict(axis=1),
    "ReduceMean": dict(keepdims=1),
}


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """opset 13, BatchNorm kept, every attribute written as torch.onnx writes it; the BatchNorm
    variances near epsilon (gammas scaled to match), so that epsilon's value shows in the outputs."""
    model = randomized(MobileNetV2(num_classes=10, width_mult=0.35), 13)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(1e-4), m.weight.mul_(1e-2)
    return export(model, tmp_path_factory.mktemp("onnx") / "kept.onnx", 13, fold=False)


def omit_defaults(graph):
    """Every attribute left at its ONNX default deleted, and kernel_shape (the weights give
    it); Gemm's weight stored transposed so that transB goes too; GlobalAveragePool as
    ReduceMean over H and W with keepdims left out."""
    from onnx import helper, numpy_helper
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transB"):
            w = inits[node.input[1]]
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
            attrs["transB"] = 0
        if node.op_type == "GlobalAveragePool":
            node.op_type, attrs = "ReduceMean", dict(axes=[2, 3])
        default = ONNX_DEFAULTS.get(node.op_type, {})
        keep = {k: v for k, v in attrs.items() if k != "kernel_shape" and not (
            k in default and np.allclose(v, default[k], rtol=1e-6, atol=0))}
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in keep.items())


def test_attributes_left_to_their_onnx_defaults_convert_as_onnxruntime_runs_them(kept, tmp_path):
    path = edited(kept, tmp_path / "defaults.onnx", omit_defaults)
    nodes = onnx.load(str(path)).graph.node
    left = {(n.op_type, a.name) for n in nodes for a in n.attribute if n.op_type != "Constant"}
    assert left == {("Conv", "pads"), ("Conv", "strides"), ("Conv", "group"), ("ReduceMean", "axes")}  # 3x3 convs'
    assert sum(n.op_type == "BatchNormalization" for n in nodes) == 52 and "Gemm" in {n.op_type for n in nodes}
    ws = convert(path, tmp_path / "mnv2.h5")
    assert (ws.classes, ws.padding) == (10, "symmetric")
    engine = Engine.load(tmp_path / "mnv2.h5")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in ((96, 96), (113, 90)):
        x = np.random.default_rng(h).normal(0, 1, (2, h, w, 3)).astype(np.float32)
        ref = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
        close(engine.forward(x), ref)


def _node(graph, op, which=0):
    return [n for n in graph.node if n.op_type == op][which]


def _set(node, **attrs):
    from onnx import helper
    keep = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in attrs.items() if v is not None])


def _insert_after(graph, before: str, node):
    """`node` placed after the node named `before`, reading its output in place of every later reader."""
    out = next(n for n in graph.node if n.name == before).output[0]
    for n in graph.node:
        n.input[:] = [node.output[0] if v == out else v for v in n.input]
    node.input[0] = out
    nodes = []
    for n in graph.node:
        nodes.append(onnx.NodeProto()), nodes[-1].CopyFrom(n)
        if n.name == before:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def bn_after_relu6(graph):
    """The stem's BatchNormalization moved after its ReLU6."""
    bn = onnx.NodeProto()
    bn.CopyFrom(_node(graph, "BatchNormalization"))
    for n in graph.node:
        n.input[:] = [bn.input[0] if v == bn.output[0] else v for v in n.input]
    graph.node.remove(_node(graph, "BatchNormalization"))
    _insert_after(graph, _node(graph, "Clip").name, bn)


def reshaped_before_pooling(graph):
    """The stem's output reshaped from 32x32 to 16x64 (at a 64x64 input), a map every later layer takes."""
    from onnx import helper, numpy_helper
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 16, 64], np.int64), "to_16x64"))
    _insert_after(graph, _node(graph, "Clip").name, helper.make_node("Reshape", ["", "to_16x64"], ["reshaped"]))


# an edit of the kept export (an attribute left out or set, a node moved or added) that makes it no MobileNetV2
NOT_MNV2 = {
    "clip-without-min": (lambda g: _node(g, "Clip").input.__setitem__(1, ""), r"Clip\(None, 6"),
    "3x3-conv-without-pads": (lambda g: _set(_node(g, "Conv"), pads=None),
                              r"features.0.0/Conv' \(Conv\): padding pads=\[0, 0, 0, 0\] auto_pad=NOTSET"),
    "3x3-conv-uneven-pads": (lambda g: _set(_node(g, "Conv", 1), pads=[1, 1, 0, 0]), r"padding pads=\[1, 1, 0, 0\]"),
    "1x1-conv-with-pads": (lambda g: _set(_node(g, "Conv", -1), pads=[1, 1, 1, 1]),
                           r"padding pads=\[1, 1, 1, 1\] on a 1x1 conv"),
    "dilated-depthwise": (lambda g: _set(_node(g, "Conv", 1), dilations=[2, 2], pads=[2, 2, 2, 2]),
                          r"dilations \[2, 2\]"),
    "gemm-alpha": (lambda g: _set(_node(g, "Gemm"), alpha=0.5), "a Gemm with alpha, beta or transA set"),
    "gemm-beta": (lambda g: _set(_node(g, "Gemm"), beta=2.0), "a Gemm with alpha, beta or transA set"),
    "batchnorm-after-relu6": (bn_after_relu6, r"BatchNormalization\) does not fit a MobileNetV2"),
    "reshape-before-pooling": (reshaped_before_pooling, r"\(Reshape\) does not fit a MobileNetV2"),
}


@pytest.mark.parametrize("name", NOT_MNV2)
def test_an_edit_that_changes_the_maths_is_refused(kept, tmp_path, name):
    """onnxruntime computes something else on each edited file, so a conversion would be wrong."""
    edit, message = NOT_MNV2[name]
    path = edited(kept, tmp_path / f"{name}.onnx", edit)
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(run(path) - run(kept)).max() > 1e-3 * np.abs(run(kept)).max()
    with pytest.raises(WeightFileError, match=message):
        convert(path, tmp_path / "x.h5")


def test_a_size_fixed_on_one_side_only_is_no_recorded_size(kept, tmp_path):
    """H fixed, W dynamic: the file records no size; a given one (any width) is taken."""
    def fixed_height(graph):
        graph.input[0].type.tensor_type.shape.dim[2].dim_value = 96
    path = edited(kept, tmp_path / "h96.onnx", fixed_height)
    assert [d.dim_value or d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [
        "n", 3, 96, "w"]
    assert convert(path, tmp_path / "a.h5").size == (224, 224)
    assert convert(path, tmp_path / "b.h5", size=(96, 128)).size == (96, 128)


def test_a_mean_without_axes_is_refused(kept, tmp_path):
    """ReduceMean without axes averages over every axis, batch and channels too."""
    def mean_over_all(graph):
        _node(graph, "GlobalAveragePool").op_type = "ReduceMean"
    with pytest.raises(WeightFileError, match=r"a mean over axes None, where MobileNetV2 pools over H and W"):
        convert(edited(kept, tmp_path / "mean.onnx", mean_over_all), tmp_path / "x.h5")


def test_a_graph_that_is_not_mobilenet_v2_names_the_first_node_that_does_not_fit(tmp_path):
    src = export(randomized(MobileNetV2(num_classes=10, width_mult=0.35), 1), tmp_path / "m.onnx", 17)

    def relu_for_relu6(graph):  # block 3's depthwise ReLU6 becomes a ReLU
        node = next(n for n in graph.node if n.op_type == "Clip" and "features.4/conv/conv.1" in n.name)
        node.op_type = "Relu"
        del node.input[1:]
    with pytest.raises(WeightFileError, match=r"node '/features/features.4/conv/conv.1/conv.1.2/Clip' \(Relu\) "
                                              "does not fit a MobileNetV2"):
        convert(edited(src, tmp_path / "relu.onnx", relu_for_relu6), tmp_path / "x.h5")

    def no_residual(graph):  # block 2's residual Add is skipped
        add = next(n for n in graph.node if n.op_type == "Add")
        branch = next(v for v in add.input if "features.3/conv" in v)  # the project conv's output
        for n in graph.node:
            n.input[:] = [branch if v == add.output[0] else v for v in n.input]
        graph.node.remove(add)
    with pytest.raises(WeightFileError, match=r"node '/features/features.3/conv/conv.2/Conv' \(Conv\) has no "
                                              "residual Add, where MobileNetV2's block2/project has one"):
        convert(edited(src, tmp_path / "nores.onnx", no_residual), tmp_path / "x.h5")


class GluonLike(MobileNetV2):
    """MXNet Gluon's MobileNetV2, as the ONNX model zoo's mobilenetv2-7 / -12 are exported
    from it: block 0 expands by a factor of 1 (a 1x1 conv with BatchNorm and ReLU6 before
    its depthwise), and the classifier is a bias-free 1x1 conv on the pooled features,
    then Flatten."""
    def __init__(self, num_classes, width_mult):
        super().__init__(num_classes=num_classes, width_mult=width_mult)
        c = self.features[0][0].out_channels
        self.features[1].conv = torch.nn.Sequential(ConvBNReLU6(c, c, kernel_size=1), *self.features[1].conv)
        self.output = torch.nn.Conv2d(self.last_channel, num_classes, 1, bias=False)

    def forward(self, x):
        return self.output(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)).flatten(1)


@pytest.mark.slow
@pytest.mark.parametrize("opset", [7, 12])
def test_gluons_block_0_expansion_converts_and_matches_onnxruntime(opset, tmp_path):
    """The zoo's two opsets (Clip bounds as attributes, then as inputs), BatchNorm kept as
    MXNet exports it; every evaluation of the engine against onnxruntime on the file."""
    model = randomized(GluonLike(num_classes=10, width_mult=0.35), opset)
    path = export(model, tmp_path / "gluon-like.onnx", opset, fold=False)
    assert {"BatchNormalization", "Clip", "GlobalAveragePool"} <= ops(path) and "Gemm" not in ops(path)
    ws = convert(path, tmp_path / "mnv2.h5")
    assert ws.architecture.block0_expands and ws.layers["block0/expand"].kernel.shape == (16, 16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    engines = [Engine.load(tmp_path / "mnv2.h5", **kw) for kw in ({}, dict(t=4), dict(rows=True, threads=2))]
    for size in (96, 113):
        x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
        ref = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
        for engine in engines:
            try:
                close(engine.forward(x), ref)
            except AssertionError as e:
                raise AssertionError(f"{engine} at {size}: {e}") from None


def test_a_resnet_style_graph_is_refused_saying_what_was_found(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    path = export(net, tmp_path / "resnet.onnx", 17)
    with pytest.raises(WeightFileError, match=r"node '/1/Relu' \(Relu\) does not fit a MobileNetV2 "
                                              r"\(after node '/0/Conv' \(Conv\)\)"):
        convert(path, tmp_path / "x.h5")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(WeightFileError, match="not a readable ONNX model"):
        convert(tmp_path / "bad.onnx", tmp_path / "x.h5")
