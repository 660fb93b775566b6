"""The ONNX converter against onnxruntime running the same file.

torch.onnx exports of a randomised torchvision-layout MobileNetV2 with dynamic H and W,
in the shapes exporters give: BatchNormalization folded into the convs or kept, ReLU6 as
Clip with attributes (opset 7) or inputs (11+), GlobalAveragePool + Flatten + Gemm or
ReduceMean + MatMul + Add; by the TorchScript exporter and by torch.export's (dynamo=True,
torch's default, which needs onnxscript). Each file is converted once and one engine runs it at every
size; onnxruntime's output on the same file is the reference.
"""
import numpy as np
import pytest
import torch

from mnv2engine import Engine, WeightFileError, convert
from mnv2engine.weights.weightset import IMAGENET_MEAN, IMAGENET_STD

from conftest import close, require
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
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=opset,
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


def edited(src, dst, edit):
    model = onnx.load(str(src))
    edit(model.graph)
    onnx.save(model, str(dst))
    return dst


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
