"""Fold BatchNorm into the convs once, at load: the engine's runtime tensors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arch import Architecture
from .kernels import pack_expansion, pack_panels, pack_slices


@dataclass(frozen=True)
class Conv:
    """A conv or dense layer ready to run: kernel in the engine's layout, bias folded in."""
    kernel: np.ndarray
    bias: np.ndarray


def fold(layer) -> Conv:
    """w' = w * gamma / sqrt(var + eps) per output channel; b' = beta + (b - mean) * that scale.

    Computed in float64 and rounded once, so the folded weights are as close to the
    unfolded network as float32 allows.
    """
    kernel = layer.kernel.astype(np.float64)
    bias = np.zeros(kernel.shape[-1]) if layer.bias is None else layer.bias.astype(np.float64)
    if layer.bn is not None:
        bn = layer.bn
        scale = bn.gamma.astype(np.float64) / np.sqrt(bn.var.astype(np.float64) + bn.epsilon)
        kernel = kernel * scale  # the output channel is the last axis of every layout
        bias = bn.beta + (bias - bn.mean) * scale
    return Conv(np.ascontiguousarray(kernel, np.float32), np.ascontiguousarray(bias, np.float32))


def packed(conv: Conv) -> Conv:
    """A 1x1 conv or dense layer with its kernel as GEMM panels."""
    return Conv(pack_panels(conv.kernel), conv.bias)


def fold_all(ws) -> tuple[Architecture, dict[str, Conv]]:
    """All layers of a validated WeightSet, folded; the stem kernel flattened to [27, C]."""
    arch = ws.architecture
    convs = {name: fold(layer) for name, layer in ws.layers.items()}
    stem = convs["stem"]
    convs["stem"] = Conv(stem.kernel.reshape(27, -1), stem.bias)
    return arch, convs


@dataclass(frozen=True)
class BlockWeights:
    """One inverted residual's folded weights, packed for the block kernel."""
    bounds: np.ndarray
    expand: np.ndarray      # [Cin, hidden] as GEMM panels (the stem's [27, hidden] by pack_stem), per slice
    expand_bias: np.ndarray
    depthwise: np.ndarray   # [3, 3, hidden], packed by slice
    depthwise_bias: np.ndarray
    project: np.ndarray     # [hidden, Cout] as GEMM panels
    project_bias: np.ndarray


def identities(channels: int) -> tuple[Conv, Conv]:
    """A depthwise filter and a projection that pass their input on unchanged: the
    centre tap 1, the others 0; the identity matrix. On the stem's output, which ReLU6
    keeps in [0, 6], ReLU6 after the depthwise changes nothing either, and every sum
    adds exact zeros: y is the stem's output, bit for bit."""
    taps = np.zeros((3, 3, channels), np.float32)
    taps[1, 1] = 1
    zeros = np.zeros(channels, np.float32)
    return Conv(taps, zeros), Conv(np.eye(channels, dtype=np.float32), zeros)


def block_weights(arch: Architecture, convs: dict[str, Conv], bounds_per_block) -> list[BlockWeights]:
    """The first block's expansion is the stem conv: the paper's first-layer trick. Where
    the stem is a block of its own (Architecture.block0_expands), that block's depthwise
    and projection are identities."""
    out = []
    for b, bounds in zip(arch.blocks, bounds_per_block):
        exp = convs["stem" if b.index == 0 else f"{b.name}/expand"]
        if b.passes_through:
            dw, proj = identities(b.hidden)
        else:
            dw, proj = convs[f"{b.name}/depthwise"], convs[f"{b.name}/project"]
        out.append(BlockWeights(bounds, pack_expansion(exp.kernel, bounds, b.index == 0), exp.bias,
                                pack_slices(dw.kernel, bounds), dw.bias, pack_panels(proj.kernel), proj.bias))
    return out
