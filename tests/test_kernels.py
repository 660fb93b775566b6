"""Each kernel against a naive NumPy loop and against torch.nn.functional, as tests of
their own: where torch is absent (the emulated ARM job), the NumPy ones still run and the
torch ones skip, saying so (conftest.require)."""
import numpy as np
import pytest

from mnv2engine.arch import conv_padding
from mnv2engine.kernels import conv3x3, depthwise3x3, global_avg_pool, pack_panels, pointwise, pointwise_avg_pool

import naive
from conftest import close, require

RELU6, LINEAR = (0.0, 6.0), (-np.inf, np.inf)
NONE = np.empty((0, 0), np.float32)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_unclamped(out, lo, hi, share=0.2):
    """A case proves nothing where the outputs sit at the clamp bounds (all 0, or all 6):
    at least `share` of them must lie strictly between."""
    inside = float(((out > lo) & (out < hi)).mean())
    assert inside >= share, f"only {inside:.0%} of the outputs lie inside ({lo}, {hi}): the case proves little"


def pads_for(H, W, stride, convention):
    return conv_padding(H, stride, convention) + conv_padding(W, stride, convention)


REFERENCES = ["numpy", "torch"]


def functional():
    """torch.nn.functional, imported only by the tests that compare with it."""
    require("torch")
    import torch.nn.functional as F
    return F


def torch_conv(x, w_oihw, b, stride, pads, groups, lo, hi):
    """Reference: explicit (top, bottom, left, right) zero padding, then conv2d, then clamp."""
    torch, F = require("torch"), functional()
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = F.pad(t, (pads[2], pads[3], pads[0], pads[1]))
    y = F.conv2d(t, torch.from_numpy(w_oihw), torch.from_numpy(b), stride=stride, groups=groups)
    return y.clamp(lo, hi).permute(0, 2, 3, 1).numpy()


# (N, H, W, C, stride, padding convention): odd sizes, stride 2, both conventions,
# channel counts that are not a multiple of 8, batch > 1.
CONV_CASES = [
    (1, 7, 7, 5, 1, "same"),
    (2, 9, 8, 13, 2, "same"),
    (3, 8, 10, 16, 2, "symmetric"),
    (1, 11, 5, 3, 2, "symmetric"),
    (2, 6, 6, 24, 1, "symmetric"),
    (1, 1, 1, 7, 2, "same"),
    # rows wide enough for the stem's tiles: RGB at stride 2 (its constant-step path),
    # and an even number of taps per kernel row at stride 1
    (1, 29, 30, 3, 2, "same"),
    (1, 26, 27, 4, 1, "symmetric"),
    # 8 channels at stride 1: the depthwise's two pixels per vector, then its edges
    (2, 5, 21, 8, 1, "same"),
    (1, 4, 19, 8, 1, "symmetric"),
]


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("N,H,W,C,stride,conv", CONV_CASES)
def test_depthwise3x3(N, H, W, C, stride, conv, reference):
    rng = np.random.default_rng(H * 100 + C)
    x, w, b = rand(rng, N, H, W, C, scale=3), rand(rng, 3, 3, C), rand(rng, C)
    pads = pads_for(H, W, stride, conv)
    if reference == "numpy":
        ref, rel = naive.depthwise3x3(x, w, b, stride, pads, *RELU6), 1e-6
    else:
        ref, rel = torch_conv(x, w.transpose(2, 0, 1)[:, None].copy(), b, stride, pads, C, *RELU6), 1e-5
    out = np.empty(ref.shape, np.float32)
    depthwise3x3(x, w, b, stride, pads, *RELU6, out)
    close(out, ref, rel)
    assert_unclamped(out, *RELU6)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("N,H,W,C,stride,conv", CONV_CASES)
@pytest.mark.parametrize("cout", [5, 11, 21, 32])  # channel groups of 8: one, two, three, four
def test_conv3x3(N, H, W, C, stride, conv, cout, reference):
    rng = np.random.default_rng(H * 10 + cout)
    x, w, b = rand(rng, N, H, W, C), rand(rng, 3, 3, C, cout, scale=0.5), rand(rng, cout)
    pads = pads_for(H, W, stride, conv)
    lo, hi = LINEAR if cout in (5, 11) else RELU6
    if reference == "numpy":
        ref = naive.conv3x3(x, w, b, stride, pads, lo, hi)
    else:
        ref = torch_conv(x, w.transpose(3, 2, 0, 1).copy(), b, stride, pads, 1, lo, hi)
    out = np.empty(ref.shape, np.float32)
    conv3x3(x, w, b, stride, pads, lo, hi, out)
    close(out, ref, 1e-5)
    assert_unclamped(out, lo, hi)


def test_conv_rejects_output_of_wrong_shape():
    x = np.zeros((1, 8, 8, 3), np.float32)
    out = np.empty((1, 8, 8, 4), np.float32)  # stride 2 with (0, 1) padding gives 4x4
    with pytest.raises(ValueError, match="output shape"):
        conv3x3(x, np.zeros((3, 3, 3, 4), np.float32), np.zeros(4, np.float32), 2, (0, 1, 0, 1), *LINEAR, out)


POINTWISE_CASES = [(1, 3, 5), (37, 16, 24), (50, 13, 7), (9, 96, 1000), (30, 20, 100), (13, 8, 45), (25, 9, 80)]


def run_pointwise(P, cin, cout, residual, accumulate):
    """(x, w, b, residual or None, the output before, the output after, lo, hi) of one call."""
    rng = np.random.default_rng(P + cin)
    x, w, b = rand(rng, P, cin), rand(rng, cin, cout, scale=cin ** -0.5), rand(rng, cout)
    res = rand(rng, P, cout) if residual else None
    prev = rand(rng, P, cout)
    lo, hi = RELU6 if cout % 2 else LINEAR
    out = prev.copy()
    pointwise(x, pack_panels(w), b, lo, hi, out, res if residual else NONE, accumulate)
    assert_unclamped(out - (res if residual else 0), lo, hi)
    return x, w, b, res, prev, out, lo, hi


@pytest.mark.parametrize("P,cin,cout", POINTWISE_CASES)
@pytest.mark.parametrize("residual,accumulate", [(False, False), (True, False), (False, True)])
def test_pointwise(P, cin, cout, residual, accumulate):
    x, w, b, res, prev, out, lo, hi = run_pointwise(P, cin, cout, residual, accumulate)
    close(out, naive.pointwise(x, w, b, lo, hi, res, prev if accumulate else None), 1e-5)


@pytest.mark.parametrize("P,cin,cout", POINTWISE_CASES)
@pytest.mark.parametrize("residual", [False, True])
def test_pointwise_against_torch(P, cin, cout, residual):
    """The same thing as a 1x1 conv in torch (which has no accumulate-into-output)."""
    require("torch")
    x, w, b, res, _, out, lo, hi = run_pointwise(P, cin, cout, residual, False)
    ref = torch_conv(x[None, :, None, :], w.T[:, :, None, None].copy(), b, 1, (0, 0, 0, 0), 1, lo, hi)[0, :, 0]
    close(out - (res if residual else 0), ref, 1e-5)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("N,H,W,C", [(1, 7, 7, 1280), (3, 5, 3, 13)])
def test_global_avg_pool(N, H, W, C, reference):
    x = rand(np.random.default_rng(C), N, H, W, C)
    out = np.empty((N, C), np.float32)
    global_avg_pool(x, out)
    if reference == "numpy":
        ref = naive.global_avg_pool(x)
    else:
        torch = require("torch")
        ref = functional().adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 1).flatten(1).numpy()
    close(out, ref, 1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 15])
def test_pointwise_avg_pool_equals_conv_then_pool(chunk):
    rng = np.random.default_rng(chunk)
    N, H, W, cin, cout = 2, 5, 3, 8, 19
    x, w, b = rand(rng, N, H, W, cin), rand(rng, cin, cout), rand(rng, cout)
    out = np.empty((N, cout), np.float32)
    pointwise_avg_pool(x.reshape(N, H * W, cin), pack_panels(w), b, *RELU6, np.empty((chunk, cout), np.float32), out)
    conv = naive.pointwise(x.reshape(-1, cin), w, b, *RELU6).reshape(N, H, W, cout)
    close(out, naive.global_avg_pool(conv), 1e-6)
