"""torchvision-layout MobileNetV2 state_dict (.pth) -> WeightSet.

torchvision's module tree: features.0 is the stem (conv, BN), features.1..17 are the
inverted residuals (`conv` Sequential: [expand conv+BN], depthwise conv+BN, project conv,
BN), features.18 the last 1x1 conv + BN, classifier.1 the Linear. Convs are OIHW.
torch is imported only here, and only when such a file is converted.
"""
from __future__ import annotations

import numpy as np

from mnv2engine.arch import ALPHAS, Architecture
from mnv2engine.errors import WeightFileError

from .weightset import BatchNorm, Layer, WeightSet, from_oihw

TORCH_BN_EPSILON = 1e-5  # nn.BatchNorm2d's default; a state_dict does not store it


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Tensors of a .pth file, refusing anything but plain tensors (no code runs)."""
    try:
        import torch
    except ImportError:
        raise WeightFileError(f"{path}: converting a PyTorch file needs torch "
                              "(pip install 'mnv2engine[torch]')") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or unsafe pickles
        raise WeightFileError(f"{path}: not a loadable PyTorch state_dict "
                              f"(only plain tensors are accepted, nothing is executed): "
                              f"{str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightFileError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return {k.removeprefix("module."): v.detach().float().numpy() for k, v in obj.items()}


def _layer_map(arch: Architecture) -> dict[str, tuple[str, str]]:
    """engine layer name -> (torch conv prefix, torch BN prefix)."""
    out = {"stem": ("features.0.0", "features.0.1")}
    for b in arch.blocks:
        p = f"features.{b.index + 1}.conv"
        if not b.expands:
            out[f"{b.name}/depthwise"] = (f"{p}.0.0", f"{p}.0.1")
            out[f"{b.name}/project"] = (f"{p}.1", f"{p}.2")
        else:
            out[f"{b.name}/expand"] = (f"{p}.0.0", f"{p}.0.1")
            out[f"{b.name}/depthwise"] = (f"{p}.1.0", f"{p}.1.1")
            out[f"{b.name}/project"] = (f"{p}.2", f"{p}.3")
    out["head"] = (f"features.{len(arch.blocks) + 1}.0", f"features.{len(arch.blocks) + 1}.1")
    return out


def _infer_alpha(sd: dict) -> float:
    """The width multiplier whose channel counts match every conv of the state_dict."""
    if "features.0.0.weight" not in sd:
        raise WeightFileError("not a torchvision MobileNetV2 state_dict: no features.0.0.weight stem conv")

    def out_channels(conv):
        w = sd.get(f"{conv}.weight")
        return w.shape[0] if w is not None and w.ndim == 4 else None

    for alpha in ALPHAS:
        arch = Architecture(alpha=alpha, classes=0)
        convs = _layer_map(arch)
        if all(out_channels(convs[name][0]) == shape[-1] for name, shape in arch.tensor_shapes().items()):
            return alpha
    raise WeightFileError(f"state_dict channel counts match no MobileNetV2 width multiplier {ALPHAS} "
                          f"(stem conv: {sd['features.0.0.weight'].shape})")


def read_torchvision(path, size=224) -> WeightSet:
    sd = load_state_dict(path)
    alpha = _infer_alpha(sd)
    classes = sd["classifier.1.weight"].shape[0] if "classifier.1.weight" in sd else 0
    arch = Architecture(alpha=alpha, size=size, classes=classes, padding="symmetric")
    used, layers = set(), {}
    for name, (conv, bn) in _layer_map(arch).items():
        kind = name.rsplit("/", 1)[-1]
        keys = [f"{conv}.weight"] + [f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        absent = [k for k in keys if k not in sd]
        if absent:
            raise WeightFileError(f"{path}: layer {name} is missing {', '.join(absent)}")
        used.update(keys + [f"{bn}.num_batches_tracked"])
        layers[name] = Layer(
            kernel=np.ascontiguousarray(from_oihw(kind, sd[f"{conv}.weight"])),
            bn=BatchNorm(sd[f"{bn}.weight"], sd[f"{bn}.bias"], sd[f"{bn}.running_mean"],
                         sd[f"{bn}.running_var"], TORCH_BN_EPSILON))
    if classes:
        layers["classifier"] = Layer(kernel=np.ascontiguousarray(sd["classifier.1.weight"].T),
                                     bias=sd["classifier.1.bias"])
        used.update(("classifier.1.weight", "classifier.1.bias"))
    leftover = sorted(set(sd) - used)
    if leftover:
        raise WeightFileError(f"{path}: tensors that are not part of MobileNetV2 alpha={alpha}: "
                              f"{', '.join(leftover[:5])}")
    ws = WeightSet(alpha=alpha, size=arch.size, classes=classes, padding="symmetric", layers=layers,
                   source=f"torchvision state_dict {path}")
    ws.set_torchvision_preprocessing()
    return ws
