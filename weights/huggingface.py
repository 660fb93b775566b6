"""Hugging Face `save_pretrained` folders of MobileNetV2 -> WeightSet, without transformers.

A folder holds `config.json` (the architecture: `depth_multiplier`, `tf_padding`,
`num_labels`, `id2label`, ...) and the tensors, in `model.safetensors` (read with
safetensors' NumPy API) or `pytorch_model.bin` (torch.load with weights_only=True).
transformers' module tree (MobileNetV2ForImageClassification; MobileNetV2Model is the same
without `mobilenet_v2.` and `classifier`): `conv_stem.first_conv` is the stem,
`conv_stem.conv_3x3` / `reduce_1x1` block 0, `layer.{i}.expand_1x1` / `conv_3x3` /
`reduce_1x1` blocks 1-16, `conv_1x1` the head; each a `convolution` (OIHW, no bias) and a
`normalization` (BatchNorm, epsilon `layer_norm_eps`); `classifier` the Linear.
`tf_padding` pads like TensorFlow ('same'), otherwise 1 on every side ('symmetric').
The input size recorded is the one preprocessor_config.json feeds the model (its crop_size,
height and width as given), else config.json's `image_size` (an int or [H, W]).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mnv2engine.arch import ALPHAS, STEM_CHANNELS, TABLE2, Architecture, make_divisible
from mnv2engine.errors import WeightFileError

from .weightset import DEFAULT_SIZE, BatchNorm, Layer, WeightSet, from_oihw, settled_size

# config.json settings the engine's architecture fixes: (key, transformers' default, the value we run)
FIXED = (("expand_ratio", 6.0, 6.0), ("output_stride", 32, 32), ("depth_divisible_by", 8, 8),
         ("first_layer_is_expansion", True, True), ("hidden_act", "relu6", "relu6"), ("num_channels", 3, 3))


def is_huggingface(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightFileError(f"{folder}: unreadable config.json ({e})") from None
    if not isinstance(config, dict):
        raise WeightFileError(f"{folder}: config.json is not a JSON object")
    if config.get("model_type") != "mobilenet_v2":
        raise WeightFileError(f"{folder}: not a MobileNetV2: config.json describes model_type "
                              f"{config.get('model_type')!r} (architectures {config.get('architectures')})")
    return config


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise WeightFileError(f"{folder}: reading model.safetensors needs safetensors (pip install 'mnv2engine[huggingface]')") from None
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise WeightFileError(f"{folder / 'model.safetensors'}: damaged safetensors file ({e})") from None
    if (folder / "pytorch_model.bin").is_file():
        from .torchvision import load_state_dict
        return load_state_dict(folder / "pytorch_model.bin")
    raise WeightFileError(f"{folder}: a Hugging Face folder without model.safetensors or pytorch_model.bin")


def _alpha(folder, config) -> float:
    for key, default, want in FIXED:
        if config.get(key, default) != want:
            raise WeightFileError(f"{folder}: config.json sets {key}={config.get(key)!r}; the engine runs "
                                  f"MobileNetV2 with {key}={want!r}")
    alpha = config.get("depth_multiplier", 1.0)
    if alpha not in ALPHAS:
        raise WeightFileError(f"{folder}: depth_multiplier={alpha!r}; the engine runs {ALPHAS}")
    min_depth = config.get("min_depth", 8)
    for channels in (STEM_CHANNELS, *(c for _, c, _, _ in TABLE2)):
        theirs = max(min_depth, make_divisible(int(round(channels * alpha))))  # transformers' rule
        if theirs != make_divisible(channels * alpha):
            raise WeightFileError(f"{folder}: min_depth={min_depth} with depth_multiplier={alpha} makes a layer of "
                                  f"{channels} channels {theirs} wide, where MobileNetV2 {alpha} has "
                                  f"{make_divisible(channels * alpha)}")
    if not config.get("finegrained_output", True) and alpha < 1.0:
        raise WeightFileError(f"{folder}: finegrained_output=false with depth_multiplier={alpha} narrows the "
                              "last conv below 1280 channels; the engine runs the paper's 1280")
    return float(alpha)


def _layer_map(arch: Architecture, prefix: str) -> dict[str, str]:
    out = {"stem": f"{prefix}conv_stem.first_conv"}
    for b in arch.blocks:
        p = f"{prefix}conv_stem" if b.index == 0 else f"{prefix}layer.{b.index - 1}"
        if b.expands:
            out[f"{b.name}/expand"] = f"{p}.expand_1x1"
        out[f"{b.name}/depthwise"] = f"{p}.conv_3x3"
        out[f"{b.name}/project"] = f"{p}.reduce_1x1"
    out["head"] = f"{prefix}conv_1x1"
    return out


def _labels(config, classes: int) -> list[str] | None:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or len(id2label) != classes:
        return None
    labels = [id2label.get(str(i), id2label.get(i)) for i in range(classes)]
    if any(not isinstance(label, str) for label in labels):
        return None
    # transformers fills id2label with LABEL_0, LABEL_1, ... when a model has no names
    return None if all(label == f"LABEL_{i}" for i, label in enumerate(labels)) else labels


def read_huggingface(folder, size=None) -> WeightSet:
    folder = Path(folder)
    config = _config(folder)
    alpha = _alpha(folder, config)
    sd = {k: np.asarray(v) for k, v in _tensors(folder).items()}
    prefix = "mobilenet_v2." if any(k.startswith("mobilenet_v2.") for k in sd) else ""
    classes = sd["classifier.weight"].shape[0] if "classifier.weight" in sd else 0
    if classes and classes != config.get("num_labels", classes):
        raise WeightFileError(f"{folder}: the classifier has {classes} outputs, config.json says "
                              f"num_labels={config.get('num_labels')}")
    padding = "same" if config.get("tf_padding", True) else "symmetric"
    arch = Architecture(alpha=alpha, classes=classes, padding=padding)
    epsilon = float(config.get("layer_norm_eps", 1e-3))
    used, layers = set(), {}
    for name, p in _layer_map(arch, prefix).items():
        keys = [f"{p}.convolution.weight"] + [f"{p}.normalization.{k}"
                                              for k in ("weight", "bias", "running_mean", "running_var")]
        absent = [k for k in keys if k not in sd]
        if absent:
            raise WeightFileError(f"{folder}: layer {name} is missing {', '.join(absent)} "
                                  f"(min_depth={config.get('min_depth', 8)}, depth_multiplier={alpha})")
        used.update(keys + [f"{p}.normalization.num_batches_tracked", f"{p}.convolution.bias"])
        f32 = lambda k: np.ascontiguousarray(sd[k], np.float32)
        layers[name] = Layer(kernel=np.ascontiguousarray(from_oihw(name.rsplit("/", 1)[-1], f32(keys[0]))),
                             bias=f32(f"{p}.convolution.bias") if f"{p}.convolution.bias" in sd else None,
                             bn=BatchNorm(*(f32(k) for k in keys[1:]), epsilon))
    if classes:
        layers["classifier"] = Layer(kernel=np.ascontiguousarray(sd["classifier.weight"].T, np.float32),
                                     bias=np.ascontiguousarray(sd["classifier.bias"], np.float32))
        used.update(("classifier.weight", "classifier.bias"))
    leftover = sorted(set(sd) - used)
    if leftover:
        raise WeightFileError(f"{folder}: tensors that are not part of MobileNetV2 alpha={alpha}: "
                              f"{', '.join(leftover[:5])}")
    ws = WeightSet(alpha=alpha, size=(DEFAULT_SIZE, DEFAULT_SIZE), classes=classes, padding=padding, layers=layers,
                   labels=_labels(config, classes), source=f"huggingface {folder}")
    fed = _preprocessing(folder, ws)
    # the size the image processor feeds the model; else config.json's image_size (int or [H, W])
    recorded = fed or _pair(config.get("image_size"), folder / "config.json", "image_size", optional=True)
    ws.size = settled_size(folder, recorded, size)
    return ws


def _pair(value, path, key, optional=False) -> tuple[int, int] | None:
    """(H, W) from an int, a [H, W] list or transformers' {"height": H, "width": W}."""
    if value is None and optional:
        return None
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        value = [value["height"], value["width"]]
    elif isinstance(value, int):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise WeightFileError(f"{path}: {key}={value!r}, expected an int, [height, width] or "
                              "{\"height\": H, \"width\": W} of positive ints")
    return int(value[0]), int(value[1])


def _preprocessing(folder: Path, ws: WeightSet) -> tuple[int, int] | None:
    """The recipe of preprocessor_config.json where present, else of transformers'
    MobileNetV2ImageProcessor's defaults: shorter side to 256, centre crop 224,
    x = (pixel * rescale_factor - mean) / std with 1/255, 0.5, 0.5 (x = pixel / 127.5 - 1).
    Returns the (H, W) the processor feeds the model where it fixes one: the crop_size,
    or a resize to {"height", "width"} without a crop."""
    path = folder / "preprocessor_config.json"
    ws.crop, ws.crop_fraction = "shorter-side-floor", 224 / 256
    if not path.is_file():
        return None
    try:
        pre = json.loads(path.read_text())
        if not pre.get("do_resize", True):
            raise WeightFileError(f"{path}: do_resize=false feeds each image at its own size; the engine "
                                  "resizes every image to one input size")
        resize = pre.get("size") or {"shortest_edge": 256}
        resize = {"shortest_edge": resize} if isinstance(resize, int) else resize  # transformers' reading of an int
        if isinstance(resize, dict) and set(resize) == {"shortest_edge"}:
            shorter, fixed = _pair(resize["shortest_edge"], path, "size")[0], None
        else:  # resized to (H, W), the aspect ratio lost
            shorter, fixed = None, _pair(resize, path, "size")
        crop = _pair(pre.get("crop_size") or 224, path, "crop_size") if pre.get("do_center_crop", True) else None
        if crop is None or crop == fixed:
            ws.crop, fed = "none", fixed
        elif fixed:
            raise WeightFileError(f"{path}: a resize to {fixed[0]}x{fixed[1]} then a centre crop of "
                                  f"{crop[0]}x{crop[1]}; the engine crops before it resizes")
        else:  # the shorter side to `shorter`, then a centre crop of (H, W); preprocess.cropped resizes
            ws.crop_fraction, fed = max(crop) / shorter, crop  # the shorter side to round(max(H, W) / fraction)
        rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
        mean, std = ((np.asarray(pre.get("image_mean", (0.5,) * 3), np.float64),
                      np.asarray(pre.get("image_std", (0.5,) * 3), np.float64))
                     if pre.get("do_normalize", True) else (np.zeros(3), np.ones(3)))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise WeightFileError(f"{path}: unreadable ({e})") from None
    ws.scale = (rescale / std).astype(np.float32)
    ws.offset = (-mean / std).astype(np.float32)
    return fed
