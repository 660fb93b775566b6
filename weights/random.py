"""A seeded, randomly initialised MobileNetV2 for benchmarks and demos without trained weights."""
from __future__ import annotations

import numpy as np

from mnv2engine.arch import Architecture

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
