"""benchmarks/_check.py: the NumPy references the benchmarks check their outputs against
before timing, against PyTorch and Keras; and that a wrong output stops a benchmark."""
import numpy as np
import pytest

from conftest import close, load_benchmark
from torch_reference import reference_and_engine, run_with_blocks

check = load_benchmark("_check")


@pytest.mark.parametrize("alpha,size,classes", [(0.35, 67, 10), (0.5, 64, 0)])
def test_numpy_network_matches_pytorch(tmp_path, alpha, size, classes):
    model, engine = reference_and_engine(tmp_path, alpha, size, classes, seed=4)
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    ref = run_with_blocks(model, x)
    close(check.network(engine.weights, x), ref["pooled"] if classes == 0 else ref["logits"], 1e-5)


@pytest.mark.parametrize("size,stride", [(8, 2), (9, 2), (7, 1), (1, 2)])
def test_numpy_conv_matches_torch_with_tensorflow_same_padding(size, stride):
    """TF 'same' as torch sees it: explicit (0, 1) or (1, 1) zero padding, then a valid conv."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(size)
    x, w = rng.standard_normal((2, size, size + 1, 5)), rng.standard_normal((3, 3, 5, 4))
    pads = check.padding(size, stride, "same") + check.padding(size + 1, stride, "same")
    want = -(-size // stride), -(-(size + 1) // stride)
    t = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pads[2], pads[3], pads[0], pads[1]))
    ref = F.conv2d(t, torch.from_numpy(w).permute(3, 2, 0, 1), stride=stride).permute(0, 2, 3, 1).numpy()
    assert ref.shape[1:3] == want
    close(check.conv3x3(x, w, stride, pads), ref, 1e-12)
    dw = rng.standard_normal((3, 3, 5))
    ref = F.conv2d(t, torch.from_numpy(dw).permute(2, 0, 1)[:, None], stride=stride, groups=5)
    close(check.conv3x3(x, dw, stride, pads, depthwise=True), ref.permute(0, 2, 3, 1).numpy(), 1e-12)
    assert pads[:2] == ((0, 1) if size % 2 == 0 and stride == 2 else (1, 1))  # TensorFlow's rule


def test_a_wrong_output_stops_the_benchmark(capsys):
    ref = np.arange(1.0, 7.0)
    with pytest.raises(SystemExit, match=r"^bad: results differ from a reference"):
        check.check("a reference", [("good", ref + 1e-5, ref), ("bad", ref * 1.001, ref)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "good" and lines[1].endswith("OK")
    assert lines[2].split()[0] == "bad" and lines[2].endswith("FAIL")
