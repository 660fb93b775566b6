"""The whole network against a naive NumPy forward, without torch: every evaluation mode,
on one thread and on two threads sharing one image (the spin barrier of kernels/sync.py).

The reference reads the unfolded weights (conv, then BatchNorm as its documented formula,
then ReLU6) and runs them through the loops of naive.py; its strides and padding are
Table 2's and TensorFlow's 'same' rule, written here, not taken from the engine. Small,
so that it also runs under emulation (.ci/arm).
"""
import numpy as np
import pytest

from mnv2engine import Engine

import naive
from conftest import close

SIZE = (40, 34)  # odd-sized rows, a 'same' padding of (0, 1) and of (1, 1) at stride 2
# Table 2's (stride, repeats) per group of blocks: the first block of a group has the
# stride, its repeats 1; 17 blocks
STRIDES = [s if i == 0 else 1 for s, n in [(1, 1), (2, 2), (2, 3), (2, 4), (1, 3), (2, 3), (1, 1)] for i in range(n)]
MODES = {"t=1": dict(t=1), "t=3": dict(t=3), "rows": dict(rows=True)}


def same_pads(size, stride):
    """TensorFlow's 'same' padding of a 3x3 window: (top, bottom) for one axis."""
    total = max((-(-size // stride) - 1) * stride + 3 - size, 0)
    return total // 2, total - total // 2


def batchnorm(x, layer, relu6):
    """(x + bias - mean) / sqrt(var + eps) * gamma + beta, then ReLU6 if asked."""
    bn = layer.bn
    y = np.asarray(x, np.float64) + (0 if layer.bias is None else layer.bias)
    y = (y - bn.mean) / np.sqrt(bn.var.astype(np.float64) + bn.epsilon) * bn.gamma + bn.beta
    return np.clip(y, 0, 6).astype(np.float32) if relu6 else y.astype(np.float32)


def conv(kind, x, layer, stride=1):
    """A conv of the unfolded layer, with no bias and no clamp (batchnorm adds both)."""
    N, H, W, _ = x.shape
    zero = np.zeros(layer.kernel.shape[-1])
    if kind == "1x1":
        return naive.pointwise(x.reshape(-1, x.shape[-1]), layer.kernel, zero, -np.inf, np.inf).reshape(N, H, W, -1)
    pads = same_pads(H, stride) + same_pads(W, stride)
    kernel = naive.depthwise3x3 if kind == "depthwise" else naive.conv3x3
    return kernel(x, layer.kernel, zero, stride, pads, -np.inf, np.inf)


def reference_forward(weights, x):
    """Logits of the network `weights` describes, layer by layer in NumPy."""
    layers = weights.layers
    h = batchnorm(conv("3x3", x, layers["stem"], 2), layers["stem"], True)
    for i, stride in enumerate(STRIDES):
        name = f"block{i}"
        y = h
        if f"{name}/expand" in layers:
            y = batchnorm(conv("1x1", y, layers[f"{name}/expand"]), layers[f"{name}/expand"], True)
        y = batchnorm(conv("depthwise", y, layers[f"{name}/depthwise"], stride), layers[f"{name}/depthwise"], True)
        y = batchnorm(conv("1x1", y, layers[f"{name}/project"]), layers[f"{name}/project"], False)
        h = y + h if stride == 1 and y.shape == h.shape else y
    h = batchnorm(conv("1x1", h, layers["head"]), layers["head"], True)
    pooled = naive.global_avg_pool(h)
    classifier = layers["classifier"]
    return pooled.astype(np.float64) @ classifier.kernel + classifier.bias


@pytest.fixture(scope="module")
def case():
    """(weights, one image, its reference logits)."""
    weights = Engine.random(alpha=0.35, size=SIZE, classes=7, seed=11).weights
    x = np.random.default_rng(12).uniform(-1, 1, (1, *SIZE, 3)).astype(np.float32)
    ref = reference_forward(weights, x)
    assert np.ptp(ref) > 0.1 * np.abs(ref).max()  # logits that differ: a case that can fail
    return weights, x, ref


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_network_matches_numpy(case, mode, threads):
    weights, x, ref = case
    engine = Engine(weights, threads=threads, **MODES[mode])
    close(engine.forward(x), ref)
