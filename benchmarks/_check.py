"""What every benchmark runs before it times anything: its outputs against a reference.

A speed of wrong results means nothing, so a benchmark that finds its outputs off prints
which and exits before timing. The references here are plain NumPy in float64, written
from the layer definitions (no code of the engine's): a 3x3 conv as nine shifted slices,
BatchNorm applied as such rather than folded, the padding rules restated.
"""
from __future__ import annotations

import sys

import numpy as np

TOLERANCE = 1e-4  # max |diff| <= TOLERANCE * max |reference|, as the tests' close()


def check(label: str, rows, rel: float = TOLERANCE, summary: bool = False) -> None:
    """rows: (name, output, reference). Prints each one's max |diff| (only the worst with
    `summary`), and exits naming every output that is off."""
    results = []
    for name, got, ref in rows:
        ref = np.asarray(ref, np.float64)
        diff = float(np.abs(np.asarray(got, np.float64) - ref).max())
        scale = float(np.abs(ref).max())
        results.append((name, diff, scale, diff <= rel * scale))
    print(f"check vs {label}, tolerance max |diff| <= {rel:g} * max |ref|:")
    shown = [max(results, key=lambda r: r[1] / r[2])] if summary else results
    for name, diff, scale, ok in shown:
        print(f"  {'worst: ' + name if summary else name:<24} max |diff| {diff:.3g}  max |ref| {scale:.3g}  "
              f"ratio {diff / scale:.2g}  {'OK' if ok else 'FAIL'}" + (f" (all {len(results)} OK)" if summary and ok else ""))
    bad = [name for name, _, _, ok in results if not ok]
    if bad:
        sys.exit(f"{', '.join(bad)}: results differ from {label}; timings would be meaningless")


def conv3x3(x, w, stride: int, pads, depthwise: bool = False) -> np.ndarray:
    """x [N, H, W, Cin], w [3, 3, Cin, Cout] (or [3, 3, C] depthwise), zero padding
    (top, bottom, left, right): the sum over the nine taps of a strided slice times the tap."""
    top, bottom, left, right = pads
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = (xp.shape[1] - 3) // stride + 1, (xp.shape[2] - 3) // stride + 1
    w = np.asarray(w, np.float64)
    out = 0.0
    for ky in range(3):
        for kx in range(3):
            patch = xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out = out + (patch * w[ky, kx] if depthwise else patch @ w[ky, kx])
    return out


def padding(size: int, stride: int, convention: str) -> tuple[int, int]:
    """PyTorch pads 1 and 1; TensorFlow's 'same' pads the least that covers ceil(size /
    stride) outputs, the odd pixel after."""
    if convention == "symmetric":
        return 1, 1
    total = max((-(-size // stride) - 1) * stride + 3 - size, 0)
    return total // 2, total - total // 2


def network(ws, x) -> np.ndarray:
    """Logits (pooled features if headless) of the MobileNetV2 a WeightSet holds, for the
    NHWC batch x: each layer conv (+ bias), then BatchNorm, then ReLU6 where Table 2 has one."""
    def layer(name, h, stride=1):
        lw = ws.layers[name]
        if name == "stem" or name.endswith("depthwise"):
            pads = padding(h.shape[1], stride, ws.padding) + padding(h.shape[2], stride, ws.padding)
            h = conv3x3(h, lw.kernel, stride, pads, depthwise=name != "stem")
        else:
            h = h @ lw.kernel.astype(np.float64)
        if lw.bias is not None:
            h = h + lw.bias
        if lw.bn is not None:
            bn = lw.bn
            h = (h - bn.mean) / np.sqrt(bn.var.astype(np.float64) + bn.epsilon) * bn.gamma + bn.beta
        return h

    def relu6(h):
        return np.clip(h, 0, 6)

    arch = ws.architecture
    h = relu6(layer("stem", np.asarray(x, np.float64), 2))
    for b in arch.table2_blocks:  # the stem, above, is Gluon's pass-through step
        block_input = h
        if b.expands:
            h = relu6(layer(f"{b.name}/expand", h))
        h = layer(f"{b.name}/project", relu6(layer(f"{b.name}/depthwise", h, b.stride)))
        if b.use_residual:
            h = h + block_input
    pooled = relu6(layer("head", h)).mean(axis=(1, 2))
    return pooled if arch.headless else layer("classifier", pooled)
