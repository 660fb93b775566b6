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
from torch_reference import MobileNetV2, randomized

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


def test_gluons_block_0_expansion_is_refused_saying_so(tmp_path):
    """MXNet Gluon's MobileNetV2 (the ONNX model zoo's) expands block 0 by a factor of 1
    with a 1x1 conv that the paper's network does not have."""
    from torch_reference import ConvBNReLU6
    model = MobileNetV2(num_classes=10, width_mult=0.35)
    model.features[1].conv = torch.nn.Sequential(ConvBNReLU6(16, 16, kernel_size=1), *model.features[1].conv)
    path = export(randomized(model, 1).eval(), tmp_path / "gluon-like.onnx", 11)
    with pytest.raises(WeightFileError, match=r"node '/features/features.1/conv/conv.0/conv.0.0/Conv' \(Conv\): "
                                              "block 0 has a 1x1 expansion conv, as MXNet Gluon's"):
        convert(path, tmp_path / "x.h5")


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
