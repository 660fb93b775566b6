"""A seeded, randomly initialised MobileNetV2 for benchmarks and demos without trained weights."""
from __future__ import annotations

import numpy as np

from mnv2engine.arch import Architecture

from .quantization import (INTEGER_RANGES, ActivationQuantization, Quantization, QuantizedLayer, dequantized,
                           layer_inputs)
from .weightset import BatchNorm, Layer, WeightSet


def random_weightset(alpha=1.0, size=224, classes=1000, seed=0, padding="same") -> WeightSet:
    """He-scaled kernels and non-trivial BatchNorm statistics (so folding is exercised).

    Every BatchNorm gets a moving variance and mean of its own, which folding must undo
    and redo exactly; gamma and beta keep activations in ReLU6's working range.
    """
    arch = Architecture(alpha=alpha, size=size, classes=classes, padding=padding)
    rng = np.random.default_rng(seed)
    layers = {}
    for name, shape in arch.tensor_shapes().items():
        fan_in = 9 if name.endswith("depthwise") else int(np.prod(shape[:-1]))
        kernel = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        c = shape[-1]
        if name == "classifier":
            layers[name] = Layer(kernel=kernel, bias=(0.1 * rng.standard_normal(c)).astype(np.float32))
            continue
        bn = BatchNorm(gamma=rng.uniform(0.5, 1.5, c).astype(np.float32),
                       beta=rng.normal(0.2, 0.2, c).astype(np.float32),
                       mean=rng.normal(0.0, 0.2, c).astype(np.float32),
                       var=rng.uniform(0.5, 2.0, c).astype(np.float32),
                       epsilon=1e-3)
        layers[name] = Layer(kernel=kernel, bn=bn)
    labels = [f"class {i}" for i in range(classes)] if classes else None
    return WeightSet(alpha=alpha, size=arch.size, classes=classes, padding=padding, layers=layers,
                     labels=labels, source=f"random seed={seed}")


def random_quantized_weightset(alpha=0.35, size=64, classes=10, seed=0, dtype="int8") -> WeightSet:
    """A seeded random MobileNetV2 as a quantized source describes one: integer weights
    (int8 per channel with zero point 0, or uint8 per tensor with a zero point), int32
    biases at scale input scale * weight scale, a scale and zero point for every
    activation, and the float tensors their dequantized values."""
    ws = random_weightset(alpha=alpha, size=size, classes=classes, seed=seed)
    arch = ws.architecture
    rng = np.random.default_rng(seed)
    lo, hi = INTEGER_RANGES[dtype]
    activations = {name: ActivationQuantization(dtype, float(np.float32(rng.uniform(0.01, 0.2))),
                                                int(rng.integers(lo, hi + 1)))
                   for name in ["input", *layer_inputs(arch)] + (["softmax"] if classes else [])}
    inputs, layers = layer_inputs(arch), {}
    for name, shape in arch.tensor_shapes().items():
        channels = shape[-1] if dtype == "int8" else 1
        kernel = rng.integers(lo, hi + 1, shape).astype(dtype)
        kernel_scale = rng.uniform(0.002, 0.05, channels).astype(np.float32)
        kernel_zero_point = (np.zeros(1, np.int64) if dtype == "int8" else rng.integers(100, 156, 1)).repeat(channels)
        bias = rng.integers(-2000, 2000, shape[-1]).astype(np.int32)
        bias_scale = (np.float64(activations[inputs[name]].scale) * kernel_scale.astype(np.float64)).astype(np.float32)
        layers[name] = QuantizedLayer(kernel, kernel_scale, kernel_zero_point, bias, bias_scale)
        ws.layers[name] = Layer(kernel=dequantized(kernel, kernel_zero_point, kernel_scale),
                                bias=dequantized(bias, np.zeros(1, np.int64), bias_scale))
    ws.quantization = Quantization(layers=layers, activations=activations)
    ws.source = f"random quantized {dtype} seed={seed}"
    return ws
