"""What a quantized source says about its integer arithmetic, kept beside the float tensors.

A quantized TFLite file defines its own arithmetic (DESIGN.md, "Quantized, exactly"): integer
weights with scales and zero points, int32 biases, and a scale and zero point for every
activation. `Quantization` keeps all of it by the engine's layer names; the WeightSet's
float tensors stay the dequantized values, which the float engine runs.

Every scale means real = (q - zero_point) * scale. Weights have one scale per tensor, or one
per output channel: the last axis in the engine's layouts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mnv2engine.arch import Architecture
from mnv2engine.errors import WeightFileError

# the integer types of weights and activations, with their ranges
INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
# TFLite's bias check: bias scale = input scale * weight scale, to this relative tolerance
BIAS_SCALE_TOLERANCE = 1e-6


@dataclass
class ActivationQuantization:
    """One activation tensor: per tensor, as TFLite quantizes activations."""
    dtype: str           # 'int8' or 'uint8'
    scale: float         # a float32 value, as TFLite stores it
    zero_point: int


@dataclass
class QuantizedLayer:
    """A conv, depthwise or dense layer as the source stores it, in the engine's kernel layout."""
    kernel: np.ndarray              # int8 or uint8, the float kernel's shape
    kernel_scale: np.ndarray        # float32 [1] or [Cout]
    kernel_zero_point: np.ndarray   # int64, one per scale
    bias: np.ndarray                # int32 [Cout]; its zero point is 0
    bias_scale: np.ndarray          # float32 [1] or [Cout]

    TENSORS = ("kernel", "kernel_scale", "kernel_zero_point", "bias", "bias_scale")
    DTYPES = {"kernel_scale": np.float32, "kernel_zero_point": np.int64, "bias": np.int32,
              "bias_scale": np.float32}

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.TENSORS}


@dataclass
class Quantization:
    """Integer weights by layer name, and the quantization of every activation the
    engine's layers produce: 'input' (what the stem reads), each conv layer's output after
    its fused activation ('stem', 'block1/expand', ...), 'block{i}/residual' (the sum of a
    residual block), 'pool' (the pooled features), 'classifier' (the logits) and, where the
    source ends in one, 'softmax'."""
    layers: dict[str, QuantizedLayer]
    activations: dict[str, ActivationQuantization]


def layer_inputs(arch: Architecture) -> dict[str, str]:
    """Each activation the engine computes, mapped to the activation it reads, in order."""
    residual = {b.name for b in arch.table2_blocks if b.use_residual}
    out, prev = {}, "input"
    for name in arch.tensor_shapes():
        if name == "classifier":
            out["pool"], prev = prev, "pool"
        out[name], prev = prev, name
        block, _, kind = name.partition("/")
        if kind == "project" and block in residual:
            out[f"{block}/residual"], prev = prev, f"{block}/residual"
    return out


def expected_activations(arch: Architecture) -> set[str]:
    return {"input", *layer_inputs(arch)}


def check_activation(what: str, a: ActivationQuantization) -> None:
    """A usable per-tensor quantization: known dtype, positive finite scale, zero point in range."""
    if a.dtype not in INTEGER_RANGES:
        raise WeightFileError(f"{what}: quantized type {a.dtype!r}, expected int8 or uint8")
    check_scales(what, np.array([a.scale]))
    check_zero_points(what, a.dtype, np.array([a.zero_point]))


def check_scales(what: str, scale: np.ndarray) -> None:
    bad = ~(np.isfinite(scale) & (scale > 0))
    if bad.any():
        channel = f" (channel {int(np.argmax(bad))})" if scale.size > 1 else ""
        raise WeightFileError(f"{what}: scale {float(scale[bad][0])!r}{channel}: a scale must be positive and finite")


def check_zero_points(what: str, dtype: str, zero_point: np.ndarray) -> None:
    lo, hi = INTEGER_RANGES[dtype]
    bad = (zero_point < lo) | (zero_point > hi)
    if bad.any():
        channel = f" (channel {int(np.argmax(bad))})" if zero_point.size > 1 else ""
        raise WeightFileError(f"{what}: zero point {int(zero_point[bad][0])}{channel} is outside {dtype}'s range "
                              f"[{lo}, {hi}]")


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier (kernels/internal/quantization_util.cc): real =
    multiplier * 2^(shift - 31), multiplier a Q0.31 fixed-point number in [2^30, 2^31).
    Raises ValueError where TFLite could not represent `real`: not finite, <= 0, flushed to
    zero (shift < -31), or a left shift of 31 or more, which overflows int32."""
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"{real!r} is not a positive finite number")
    fraction, shift = math.frexp(real)
    fixed = math.floor(fraction * (1 << 31) + 0.5)  # TfLiteRound: half away from zero (fraction > 0), exact
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        raise ValueError(f"{real!r} is so small that TFLite flushes it to zero (shift {shift} < -31)")
    if shift > 30:
        raise ValueError(f"{real!r} needs a left shift of {shift}, which overflows int32")
    return fixed, shift


def validate_quantization(q: Quantization, arch: Architecture, float_layers: dict) -> None:
    """Check a Quantization against the architecture and the float tensors beside it; the
    message names the tensor, as the file calls it (quantization/...)."""
    want = expected_activations(arch)
    order = ["input", *layer_inputs(arch)]
    for name in sorted(want - q.activations.keys(), key=order.index):
        raise WeightFileError(f"quantization/activations/{name}: missing from a quantized model")
    for name in sorted(q.activations.keys() - want - {"softmax"}):
        raise WeightFileError(f"quantization/activations/{name}: not an activation of MobileNetV2 "
                              f"alpha={arch.alpha}, classes={arch.classes}")
    if "softmax" in q.activations and arch.headless:
        raise WeightFileError("quantization/activations/softmax: a headless model has no softmax")
    for name, a in q.activations.items():
        check_activation(f"quantization/activations/{name}", a)
    if q.layers.keys() != float_layers.keys():
        differ = sorted(q.layers.keys() ^ float_layers.keys())
        raise WeightFileError(f"quantization/layers/{differ[0]}: the quantized layers differ from the float ones")
    inputs = layer_inputs(arch)
    for name, layer in q.layers.items():
        _check_layer(f"quantization/layers/{name}", layer, float_layers[name],
                     q.activations[inputs[name]], q.activations[name])


def _check_layer(what: str, layer: QuantizedLayer, float_layer, src: ActivationQuantization,
                 out: ActivationQuantization) -> None:
    if float_layer.bias is None or float_layer.bn is not None:
        raise WeightFileError(f"{what}: a quantized layer's float tensors are a kernel and a bias, without BatchNorm")
    kernel = layer.kernel
    if not isinstance(kernel, np.ndarray) or kernel.dtype.name not in INTEGER_RANGES:
        raise WeightFileError(f"{what}/kernel: expected int8 or uint8, got {getattr(kernel, 'dtype', kernel)!r}")
    if kernel.shape != float_layer.kernel.shape:
        raise WeightFileError(f"{what}/kernel: shape {kernel.shape}, the float kernel's is {float_layer.kernel.shape}")
    cout = kernel.shape[-1]
    for tname, dtype in QuantizedLayer.DTYPES.items():
        arr = getattr(layer, tname)
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
            raise WeightFileError(f"{what}/{tname}: expected a vector of {np.dtype(dtype).name}, got "
                                  f"{getattr(arr, 'dtype', type(arr).__name__)} {np.shape(arr)}")
    for tname, count in (("kernel_scale", len(layer.kernel_scale)), ("bias", cout), ("bias_scale", len(layer.bias_scale))):
        if count not in (1, cout) or tname == "bias" and len(layer.bias) != cout:
            raise WeightFileError(f"{what}/{tname}: {len(getattr(layer, tname))} values for {cout} output "
                                  "channels (expected 1 or one per channel)")
    if layer.kernel_zero_point.shape != layer.kernel_scale.shape:
        raise WeightFileError(f"{what}/kernel_zero_point: {len(layer.kernel_zero_point)} zero points for "
                              f"{len(layer.kernel_scale)} scales")
    check_scales(f"{what}/kernel_scale", layer.kernel_scale)
    check_scales(f"{what}/bias_scale", layer.bias_scale)
    check_zero_points(f"{what}/kernel_zero_point", kernel.dtype.name, layer.kernel_zero_point)
    if kernel.dtype == np.int8 and layer.kernel_zero_point.any():
        raise WeightFileError(f"{what}/kernel_zero_point: {int(layer.kernel_zero_point[layer.kernel_zero_point != 0][0])}"
                              ": TFLite's int8 kernels take symmetric weights (zero point 0)")
    product = np.float64(src.scale) * layer.kernel_scale.astype(np.float64)
    bias_scale = np.broadcast_to(layer.bias_scale.astype(np.float64), product.shape)
    off = np.abs(product - bias_scale) > BIAS_SCALE_TOLERANCE * np.minimum(product, bias_scale)
    if off.any():
        c = int(np.argmax(off))
        raise WeightFileError(f"{what}/bias_scale: {bias_scale[c]!r} (channel {c}) is not input scale * weight "
                              f"scale = {product[c]!r}, as TFLite's int32 bias must be")
    for c, w_scale in enumerate(layer.kernel_scale.astype(np.float64)):
        real = float(np.float64(src.scale) * w_scale / np.float64(out.scale))
        try:
            quantize_multiplier(real)
        except ValueError as e:
            raise WeightFileError(f"{what}: requantization multiplier input scale * weight scale / output scale "
                                  f"(channel {c}) is not representable by TFLite's QuantizeMultiplier: {e}") from None
    for tname, arr in (("kernel", dequantized(layer.kernel, layer.kernel_zero_point, layer.kernel_scale)),
                       ("bias", dequantized(layer.bias, np.zeros(1, np.int64), layer.bias_scale))):
        if arr.tobytes() != getattr(float_layer, tname).tobytes():
            raise WeightFileError(f"{what}/{tname}: the float {tname} beside it is not its dequantized value")


def dequantized(q: np.ndarray, zero_point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 (q - zero_point) * scale, per output channel (the last axis), computed in
    float64 as the converters do."""
    return ((q - zero_point.astype(np.float64)) * scale.astype(np.float64)).astype(np.float32)
