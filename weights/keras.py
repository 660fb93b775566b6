"""Keras MobileNetV2 (`keras.applications.MobileNetV2`) weight files -> WeightSet.

Read with h5py and the standard library alone: converting needs neither Keras nor
TensorFlow. A Keras 3 `.keras` file is a zip of `config.json` (the model) and
`model.weights.h5` (the tensors). Three HDF5 layouts hold the same tensors:
- legacy weights (the official applications files, Keras 2 `save_weights("x.h5")`): root
  attribute `layer_names`; each layer group lists its tensors in attribute `weight_names`
  ("Conv1/kernel:0", or "Conv1/kernel" without the suffix), stored at `<layer>/<weight name>`;
- legacy full model (`model.save("x.h5")`): the same under the group `model_weights`;
- Keras 3 `.weights.h5`: `layers/<class>[_<n>]/vars/0..k`. The groups are named after the
  layer *class* (conv2d, conv2d_1, ...) numbered in model order, the vars in creation order;
  recent Keras also records the layer's own name as attribute `name` of `vars`.
Each is reduced to {Keras layer name: {role: array}} (roles: kernel, bias, gamma, beta,
moving_mean, moving_variance), then mapped onto the engine's layers. Keras kernels are HWIO:
[3, 3, 3, C] stem, [1, 1, Cin, Cout] pointwise, [3, 3, C, 1] depthwise; Dense [Cin, classes].
"""
from __future__ import annotations

import io
import json
import re
import zipfile

import h5py
import numpy as np

from mnv2engine.arch import ALPHAS, Architecture
from mnv2engine.errors import WeightFileError

from .weightset import BatchNorm, Layer, WeightSet, settled_size

KERAS_BN_EPSILON = 1e-3  # every BatchNormalization of keras.applications.MobileNetV2; not in a weights-only file
BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras's creation order
SIGNATURE = ("Conv1", "expanded_conv_depthwise")  # MobileNet v1 has conv1, v3 has no Conv1
KERAS_CLASS = {"depthwise": "depthwise_conv2d", "classifier": "dense"}  # of the others: conv2d


def _layer_map(arch: Architecture) -> dict[str, tuple[str, str | None]]:
    """engine layer name -> (Keras conv/dense layer, Keras BatchNormalization layer), in model order."""
    out = {"stem": ("Conv1", "bn_Conv1")}
    for b in arch.blocks:
        p = "expanded_conv" if b.index == 0 else f"block_{b.index}"
        if b.expands:
            out[f"{b.name}/expand"] = (f"{p}_expand", f"{p}_expand_BN")
        out[f"{b.name}/depthwise"] = (f"{p}_depthwise", f"{p}_depthwise_BN")
        out[f"{b.name}/project"] = (f"{p}_project", f"{p}_project_BN")
    out["head"] = ("Conv_1", "Conv_1_bn")
    if not arch.headless:
        out["classifier"] = ("predictions", None)
    return out


def _keras_shapes(arch: Architecture) -> dict[tuple[str, str], tuple[int, ...]]:
    """(Keras layer, role) -> the shape Keras stores, for every tensor of the model."""
    names, out = _layer_map(arch), {}
    for name, shape in arch.tensor_shapes().items():
        conv, bn = names[name]
        kind, width = name.rsplit("/", 1)[-1], shape[-1:]
        if kind == "depthwise":
            shape = shape + (1,)                   # [3, 3, C] <- [3, 3, C, 1]
        elif kind in ("expand", "project", "head"):
            shape = (1, 1) + shape                 # [Cin, Cout] <- [1, 1, Cin, Cout]
        out[conv, "kernel"] = shape
        if bn is None:
            out[conv, "bias"] = width
        else:
            out.update({(bn, role): width for role in BN_ROLES})
    return out


def _strings(values) -> list[str]:
    """An HDF5 string-array attribute (bytes in Keras 2 files, str in Keras 3) as str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _read_legacy(group: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    """Tensors of the `layer_names` / `weight_names` layout, by layer and role.

    The role is the weight name's last part without ":0"; Keras 2 calls the depthwise
    kernel "depthwise_kernel", Keras 3 "kernel".
    """
    out = {}
    for lname in _strings(group.attrs["layer_names"]):
        wnames = _strings(group[lname].attrs.get("weight_names", []))
        if wnames:
            roles = [w.rsplit("/", 1)[-1].removesuffix(":0").removeprefix("depthwise_") for w in wnames]
            out[lname] = {role: group[lname][w][()] for role, w in zip(roles, wnames)}
    return out


def _class_and_index(key: str) -> tuple[str, int]:
    """'batch_normalization_12' -> ('batch_normalization', 12); 'conv2d' -> ('conv2d', 0)."""
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return m[1], int(m[2] or 0)


def _read_weights_h5(layers: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    """Tensors of the Keras 3 `.weights.h5` layout, by layer and role.

    Roles follow from the layer class and the var's position; vars beyond those known are
    kept as `vars/<n>` so that they are reported as leftovers. Layers are named by the
    `name` attribute where Keras recorded it, otherwise by their place in the model.
    """
    entries = []  # (group key, recorded name, {role: array})
    for key, g in layers.items():
        vars_ = g.get("vars")
        if vars_ is None or not len(vars_):
            continue
        roles = list(BN_ROLES if _class_and_index(key)[0] == "batch_normalization" else ("kernel", "bias"))
        arrays = [vars_[k][()] for k in sorted(vars_, key=int)]
        roles += [f"vars/{i}" for i in range(len(roles), len(arrays))]
        entries.append((key, vars_.attrs.get("name"), dict(zip(roles, arrays))))
    if all(name is not None for _, name, _ in entries):
        return {_strings(name)[0]: tensors for _, name, tensors in entries}
    return _name_by_structure(entries)


def _name_by_structure(entries) -> dict[str, dict[str, np.ndarray]]:
    """Give unnamed `.weights.h5` layers their MobileNetV2 names: the n-th conv2d group is
    the n-th Conv2D of the model, and so on for each class."""
    found = {}
    for key, _, tensors in sorted(entries, key=lambda e: _class_and_index(e[0])):
        found.setdefault(_class_and_index(key)[0], []).append(tensors)
    expected = {}
    for name, (conv, bn) in _layer_map(Architecture(classes=len(found.get("dense", [])))).items():
        kind = name.rsplit("/", 1)[-1]
        expected.setdefault(KERAS_CLASS.get(kind, "conv2d"), []).append(conv)
        if bn is not None:
            expected.setdefault("batch_normalization", []).append(bn)
    counts, want = ({cls: len(v) for cls, v in d.items()} for d in (found, expected))
    if counts != want:
        raise WeightFileError(f"not a Keras MobileNetV2 weight file: layers with weights by class "
                              f"{counts}, expected {want}")
    return {name: tensors for cls in found for name, tensors in zip(expected[cls], found[cls])}


def load_keras_tensors(path, source=None) -> dict[str, dict[str, np.ndarray]]:
    """{Keras layer: {role: array}} of any of the three layouts, read from `source` (an
    open file, such as the weights inside a `.keras` zip) or else `path`."""
    try:
        f = h5py.File(path if source is None else source, "r")
    except FileNotFoundError:
        raise WeightFileError(f"{path}: no such file") from None
    except OSError as e:
        raise WeightFileError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        try:
            if "layer_names" in f.attrs:
                return _read_legacy(f)
            if isinstance(f.get("model_weights"), h5py.Group) and "layer_names" in f["model_weights"].attrs:
                return _read_legacy(f["model_weights"])
            if isinstance(f.get("layers"), h5py.Group):
                return _read_weights_h5(f["layers"])
        except WeightFileError as e:
            raise WeightFileError(f"{path}: {e}") from None
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise WeightFileError(f"{path}: damaged or incomplete Keras weight file "
                                  f"({type(e).__name__}: {e})") from None
    raise WeightFileError(f"{path}: an HDF5 file, but not a Keras weight file (no layer_names, "
                          "model_weights or layers/) nor an mnv2engine file")


def _classes(path, tensors: dict) -> int:
    """Outputs of the Dense `predictions` layer; 0 (headless) without one, as in `_no_top` files."""
    if "predictions" not in tensors:
        return 0
    kernel = tensors["predictions"].get("kernel")
    if kernel is None or kernel.ndim != 2:
        raise WeightFileError(f"{path}: layer predictions: expected a Dense kernel [features, classes], "
                              f"got {'none' if kernel is None else f'shape {kernel.shape}'}")
    return kernel.shape[1]


def _check_tensors(path, tensors: dict, classes: int) -> None:
    """Every tensor of a Keras MobileNetV2 present and floating-point, and nothing else.
    Tensor and layer names do not depend on alpha."""
    expected = _keras_shapes(Architecture(classes=classes))
    for layer, role in expected:
        if layer not in tensors:
            raise WeightFileError(f"{path}: Keras MobileNetV2 layer {layer} is missing")
        if role not in tensors[layer]:
            raise WeightFileError(f"{path}: layer {layer} has no {role} "
                                  f"(it holds {', '.join(tensors[layer])})")
        arr = tensors[layer][role]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise WeightFileError(f"{path}: {layer}/{role}: expected floating-point weights, "
                                  f"got {getattr(arr, 'dtype', type(arr).__name__)}")
    leftover = [f"{layer}/{role}" for layer, roles in tensors.items() for role in roles
                if (layer, role) not in expected]
    if leftover:
        raise WeightFileError(f"{path}: tensors that are not part of a Keras MobileNetV2: "
                              f"{', '.join(leftover[:5])}")


def _infer_alpha(path, tensors: dict, classes: int) -> float:
    """The width multiplier whose shapes match every tensor; otherwise name the first
    disagreeing tensor of the closest one."""
    best = None
    for alpha in ALPHAS:
        shapes = _keras_shapes(Architecture(alpha=alpha, classes=classes))
        wrong = [(key, want) for key, want in shapes.items() if tensors[key[0]][key[1]].shape != want]
        if not wrong:
            return alpha
        if best is None or len(wrong) < len(best[1]):
            best = (alpha, wrong, len(shapes))
    alpha, wrong, total = best
    (layer, role), want = wrong[0]
    raise WeightFileError(f"{path}: layer {layer} {role} has shape {tensors[layer][role].shape}, expected "
                          f"{want} for MobileNetV2 alpha={alpha} (the closest width multiplier: "
                          f"{len(wrong)} of {total} tensors disagree; none of {ALPHAS} matches)")


def read_keras_zip(path, size=None) -> WeightSet:
    """A Keras 3 `.keras` file: its config gives the input size, its weights the tensors."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            weights = io.BytesIO(z.read("model.weights.h5"))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightFileError(f"{path}: damaged or incomplete .keras file ({type(e).__name__}: {e})") from None
    return read_keras(path, size, config=config, source=weights)


def model_config(path) -> dict | None:
    """The model config a full-model legacy `.h5` records (attribute `model_config`), else None."""
    with h5py.File(path, "r") as f:
        text = f.attrs.get("model_config")
    if text is None:
        return None
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except ValueError as e:
        raise WeightFileError(f"{path}: damaged model_config attribute ({e})") from None


def recorded_size(config: dict | None) -> tuple[int, int] | None:
    """(height, width) of the model's InputLayer, where the config fixes it; None for
    `input_shape=None` (any size) or no config. Keras 3 calls it `batch_shape`, Keras 2
    `batch_input_shape`: [batch, H, W, channels]."""
    for layer in ((config or {}).get("config") or {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            cfg = layer.get("config", {})
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if shape and len(shape) == 4 and all(isinstance(s, int) for s in shape[1:3]):
                return int(shape[1]), int(shape[2])
            return None
    return None


# Keras's constructor defaults (keras.layers) of the attributes that change what a layer
# computes, for a model config that omits them.
KERAS_DEFAULTS = {
    "Conv2D": {"strides": 1, "dilation_rate": 1, "padding": "valid", "activation": None},
    "DepthwiseConv2D": {"strides": 1, "dilation_rate": 1, "padding": "valid", "activation": None},
    "BatchNormalization": {"epsilon": 1e-3},
    "ReLU": {"max_value": None, "negative_slope": 0.0, "threshold": 0.0},
    "ZeroPadding2D": {"padding": 1},
}


def _pair(value) -> tuple:
    """strides / dilation_rate / a ZeroPadding2D axis: an int or a pair, as a pair."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _followed_config(path, config: dict | None, arch: Architecture, recorded: bool) -> dict[str, float]:
    """The BatchNorm epsilons a model config gives, by layer, after checking each other
    attribute the engine cannot follow against MobileNetV2's: conv strides, dilation,
    activation and padding ('same', or 'valid' after a ZeroPadding2D that pads as TF 'same'
    does), ReLU6. An attribute the config omits takes Keras's default, as when Keras loads
    the file. Without a config (weights only): MobileNetV2's values."""
    layers = {}
    for layer in ((config or {}).get("config") or {}).get("layers", []):
        cfg = layer.get("config") or {}
        layers[layer.get("name") or cfg.get("name")] = (layer.get("class_name"), cfg)

    def value(name, key):
        cls, cfg = layers[name]
        return cfg[key] if key in cfg else KERAS_DEFAULTS[cls][key]

    def refuse(name, key, want):
        omitted = " (Keras's default: the config omits it)" if key not in layers[name][1] else ""
        raise WeightFileError(f"{path}: layer {name}: {key} {value(name, key)!r}{omitted}, where MobileNetV2 "
                              f"has {want}: the engine cannot run this model")

    def has(name, cls):
        return name in layers and layers[name][0] == cls

    blocks, epsilons = {b.name: b for b in arch.blocks}, {}
    for name, (conv, bn) in _layer_map(arch).items():
        if bn is not None:
            epsilons[bn] = float(value(bn, "epsilon")) if has(bn, "BatchNormalization") else KERAS_BN_EPSILON
        kind = name.rsplit("/", 1)[-1]
        cls = "DepthwiseConv2D" if kind == "depthwise" else "Conv2D"
        if not has(conv, cls):
            continue
        stride, in_size = 1, None  # 1x1 convs
        if kind == "stem":
            stride, in_size = 2, arch.size
        elif kind == "depthwise":
            block = blocks[name.split("/")[0]]
            stride, in_size = block.stride, block.in_size
        if _pair(value(conv, "strides")) != (stride, stride):
            refuse(conv, "strides", (stride, stride))
        if _pair(value(conv, "dilation_rate")) != (1, 1):
            refuse(conv, "dilation_rate", (1, 1))
        if value(conv, "activation") not in (None, "linear"):
            refuse(conv, "activation", "'linear'")
        pad = conv.removesuffix("_depthwise") + "_pad"  # Conv1_pad, block_1_pad: a ZeroPadding2D before it
        if in_size is not None and not has(pad, "ZeroPadding2D") and value(conv, "padding") != "same":
            refuse(conv, "padding", "'same'")
        if in_size is not None and has(pad, "ZeroPadding2D"):  # a 1x1 conv pads nothing either way
            if value(conv, "padding") != "valid":
                refuse(conv, "padding", f"'valid' after {pad}")
            want = arch.pads(in_size, stride)
            # Keras's correct_pad pads (0, 1) where the model has no fixed size
            accepted = [want] + ([(0, 1, 0, 1)] if not recorded and stride == 2 else [])
            if tuple(p for axis in _pair(value(pad, "padding")) for p in _pair(axis)) not in accepted:
                refuse(pad, "padding", f"TF 'same' padding (top, bottom, left, right) {want}")
        relu = "out_relu" if kind == "head" else f"{conv}_relu"
        if kind != "project" and has(relu, "ReLU"):
            if value(relu, "max_value") is None or float(value(relu, "max_value")) != 6:
                refuse(relu, "max_value", 6.0)
            for key in ("negative_slope", "threshold"):
                if float(value(relu, key)) != 0:
                    refuse(relu, key, 0.0)
    return epsilons


def _what(config: dict | None) -> str:
    """What a config says the model is, for an error message."""
    if not config:
        return ""
    return f"; the file holds a {config.get('class_name', '?')} model named {(config.get('config') or {}).get('name')!r}"


def read_keras(path, size=None, config=None, source=None) -> WeightSet:
    """A Keras MobileNetV2 weight file as a WeightSet; alpha and classes follow from the shapes.

    The input size is the one the model config records (a full-model file or a `.keras`
    zip); a `size` that contradicts it is refused. Weights-only files do not record one
    (the network runs at any size), so it is `size`, else 224.
    Padding is "same": Keras pads its stride-2 depthwise convs with `correct_pad` (0 before and
    1 after on an even size, 1 and 1 on an odd one) and runs them 'valid', which is TF 'same'.
    Where the file has a model config, its BatchNorm epsilons are used and whatever else it
    says a layer computes is checked (`_followed_config`).
    """
    if source is None:
        config = model_config(path)
    tensors = load_keras_tensors(path, source)
    missing = [name for name in SIGNATURE if name not in tensors]
    if missing:
        raise WeightFileError(f"{path}: not a Keras MobileNetV2 weight file (no layer "
                              f"{' / '.join(missing)}; its layers: {', '.join(list(tensors)[:8]) or 'none'}"
                              f"{_what(config)})")
    recorded = recorded_size(config)
    size = settled_size(path, recorded, size)
    classes = _classes(path, tensors)
    _check_tensors(path, tensors, classes)
    alpha = _infer_alpha(path, tensors, classes)
    arch = Architecture(alpha=alpha, size=size, classes=classes, padding="same")
    epsilons = _followed_config(path, config, arch, recorded is not None)

    def f32(layer, role):
        return np.ascontiguousarray(tensors[layer][role], dtype=np.float32)

    names, layers = _layer_map(arch), {}
    for name, shape in arch.tensor_shapes().items():
        conv, bn = names[name]
        # The shapes matched, so dropping Keras's unit axes is a reshape (no reordering).
        kernel = f32(conv, "kernel").reshape(shape)
        if bn is None:
            layers[name] = Layer(kernel=kernel, bias=f32(conv, "bias"))
        else:
            layers[name] = Layer(kernel=kernel, bn=BatchNorm(*(f32(bn, r) for r in BN_ROLES), epsilon=epsilons[bn]))
    # Preprocessing stays the WeightSet default, x / 127.5 - 1 (mobilenet_v2.preprocess_input).
    return WeightSet(alpha=alpha, size=arch.size, classes=classes, padding="same", layers=layers,
                     source=f"keras {path}")
