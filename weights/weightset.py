"""Canonical tensors of one MobileNetV2, whatever framework they came from.

Kernel layouts are the engine's (see `Architecture.tensor_shapes`): HWIO for the stem,
[3, 3, C] for depthwise, [Cin, Cout] for 1x1 convs and the classifier. A layer carries a
bias, a BatchNorm, or both (a bias before the BatchNorm), all float32. Of a quantized
source, `quantization` keeps its integer arithmetic beside them (weights/quantization.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mnv2engine.arch import Architecture
from mnv2engine.errors import EngineError, WeightFileError
from mnv2engine.preprocess import CROPS

from .quantization import Quantization, validate_quantization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BatchNorm:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float

    TENSORS = ("gamma", "beta", "mean", "var")


@dataclass
class Layer:
    kernel: np.ndarray
    bias: np.ndarray | None = None
    bn: BatchNorm | None = None

    def tensors(self) -> dict[str, np.ndarray]:
        """Every array of the layer by its name in the file ('kernel', 'bias', 'batchnorm/gamma', ...)."""
        out = {"kernel": self.kernel}
        if self.bias is not None:
            out["bias"] = self.bias
        if self.bn is not None:
            out.update({f"batchnorm/{k}": getattr(self.bn, k) for k in BatchNorm.TENSORS})
        return out


@dataclass
class WeightSet:
    """Everything a weight file holds: the architecture, the tensors, how to feed it."""
    alpha: float
    size: tuple[int, int]
    classes: int
    padding: str
    layers: dict[str, Layer]
    # x = pixel * scale + offset, per RGB channel, pixel in [0, 255]
    scale: np.ndarray = field(default_factory=lambda: np.full(3, 1 / 127.5, np.float32))
    offset: np.ndarray = field(default_factory=lambda: np.full(3, -1.0, np.float32))
    labels: list[str] | None = None
    source: str = ""
    # the crop before the resize (mnv2engine/preprocess.py): the source's evaluation recipe
    crop: str = "central"
    crop_fraction: float = 0.875
    # a quantized source's integer weights and activation quantization; the float tensors
    # above are their dequantized values, which the engine runs
    quantization: Quantization | None = None

    @property
    def architecture(self) -> Architecture:
        """The network the layers describe: a layer block0/expand says block 0 expands (MXNet Gluon's)."""
        return Architecture(alpha=self.alpha, size=tuple(self.size), classes=self.classes, padding=self.padding,
                            block0_expands="block0/expand" in self.layers)

    def set_torchvision_preprocessing(self):
        """torchvision's ImageNet evaluation: shorter side to 256, centre crop 224, mean and std."""
        self.crop, self.crop_fraction = "shorter-side", 224 / 256
        self.set_mean_std()

    def set_mean_std(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        """Preprocessing given as (pixel / 255 - mean) / std, stored as scale and offset."""
        std = np.asarray(std, np.float64)
        self.scale = (1 / (255 * std)).astype(np.float32)
        self.offset = (-np.asarray(mean, np.float64) / std).astype(np.float32)


DEFAULT_SIZE = 224


def from_oihw(kind: str, w: np.ndarray) -> np.ndarray:
    """A PyTorch / ONNX conv kernel (OIHW) in the engine's layout for a layer of `kind`
    (the last part of its name: stem, depthwise, expand, project, head)."""
    if kind == "stem":
        return w.transpose(2, 3, 1, 0)            # OIHW -> HWIO
    if kind == "depthwise":
        return w[:, 0].transpose(1, 2, 0)         # [C, 1, 3, 3] -> [3, 3, C]
    return w[:, :, 0, 0].T                         # [Cout, Cin, 1, 1] -> [Cin, Cout]


def settled_size(path, recorded, given) -> tuple[int, int]:
    """The input size to record: the file's own where it has one, else `given`, else 224.
    A `given` size that contradicts the file is refused, naming both."""
    square = lambda s: (s, s) if isinstance(s, int) else (tuple(s) if s is not None else None)
    recorded, given = square(recorded), square(given)
    if recorded is not None and given is not None and tuple(recorded) != given:
        raise WeightFileError(f"{path}: the file records input size {recorded[0]}x{recorded[1]}, but size "
                              f"{given[0]}x{given[1]} was asked for (--size / size=); leave it out to use "
                              "the file's (the engine runs any size at run time)")
    return tuple(recorded or given or (DEFAULT_SIZE, DEFAULT_SIZE))


def validate(ws: WeightSet) -> Architecture:
    """Check every tensor against the architecture `ws` claims; name the first problem."""
    try:
        arch = ws.architecture
    except EngineError as e:
        raise WeightFileError(f"the weights describe an invalid architecture: {e}") from None
    expected = arch.tensor_shapes()
    missing = [name for name in expected if name not in ws.layers]
    if missing:
        raise WeightFileError(f"missing layer(s) {', '.join(missing)} for MobileNetV2 alpha={ws.alpha}")
    extra = [name for name in ws.layers if name not in expected]
    if extra:
        raise WeightFileError(f"unexpected layer(s) {', '.join(extra)}: not part of MobileNetV2 "
                              f"alpha={ws.alpha}, classes={ws.classes}")
    for name, shape in expected.items():
        layer = ws.layers[name]
        for tname, arr in layer.tensors().items():
            want = shape if tname == "kernel" else (shape[-1],)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise WeightFileError(f"{name}/{tname}: expected float32, got "
                                      f"{getattr(arr, 'dtype', type(arr).__name__)}")
            if arr.shape != want:
                raise WeightFileError(f"{name}/{tname}: expected shape {want} for MobileNetV2 "
                                      f"alpha={ws.alpha}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise WeightFileError(f"{name}/{tname}: contains NaN or infinite values")
        if layer.bn is not None:
            if not (np.isfinite(layer.bn.epsilon) and layer.bn.epsilon >= 0):
                raise WeightFileError(f"{name}: BatchNorm epsilon must be >= 0, got {layer.bn.epsilon}")
            if (layer.bn.var + layer.bn.epsilon <= 0).any():
                raise WeightFileError(f"{name}: BatchNorm variance + epsilon must be positive")
    for what in ("scale", "offset"):
        arr = getattr(ws, what)
        if np.shape(arr) != (3,) or not np.isfinite(arr).all():
            raise WeightFileError(f"preprocessing {what} must be 3 finite numbers, got {arr!r}")
    # transformers pads a crop larger than the resized image with zeros, as PIL's crop does: a fraction > 1
    top = np.inf if ws.crop == "shorter-side-floor" else 1
    if ws.crop not in CROPS or not 0 < ws.crop_fraction <= top:
        raise WeightFileError(f"preprocessing crop must be one of {CROPS} with a fraction in (0, 1] "
                              f"((0, inf) for shorter-side-floor), got {ws.crop!r} {ws.crop_fraction!r}")
    if ws.labels is not None and len(ws.labels) != ws.classes:
        raise WeightFileError(f"{len(ws.labels)} labels for {ws.classes} classes")
    if ws.quantization is not None:
        validate_quantization(ws.quantization, arch, ws.layers)
    return arch
