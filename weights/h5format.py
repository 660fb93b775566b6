"""mnv2.h5: the engine's weight file. Schema in weights/README.md."""
from __future__ import annotations

import io
import warnings

import h5py
import numpy as np

from mnv2engine.errors import UnverifiedWeightsWarning, WeightFileError

from .digest import weightset_digest
from .quantization import ActivationQuantization, Quantization, QuantizedLayer
from .weightset import BatchNorm, Layer, WeightSet, validate

FORMAT = "mnv2engine"
SCHEMA_VERSION = 4  # 2 added the sha256 digest, 3 the crop recipe, 4 a quantized source's quantization
# /preprocess attributes outside the digest: the engine feeds RGB, resized bilinearly
FIXED_PREPROCESSING = {"channel_order": "RGB", "resize": "bilinear"}


def write_mnv2(ws: WeightSet, path) -> None:
    """Write a validated WeightSet to `path` (overwrites; callers handle safety).

    The file is made in memory, then written in one go: HDF5 writing straight onto a
    full disk printed an error per dataset and then crashed the interpreter (h5py 3,
    measured on a full tmpfs), where a plain write raises OSError (ENOSPC). The
    files are small (14 MB at alpha 1.0)."""
    with open(path, "wb") as out:
        out.write(mnv2_bytes(ws))


def mnv2_bytes(ws: WeightSet) -> bytes:
    """The bytes of the mnv2.h5 file of a validated WeightSet."""
    validate(ws)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs.update(format=_fixed(FORMAT), schema_version=SCHEMA_VERSION, alpha=ws.alpha,
                       input_size=np.asarray(ws.size, np.int64), classes=ws.classes,
                       padding=_fixed(ws.padding), source=_fixed(ws.source),
                       sha256=_fixed(weightset_digest(ws, SCHEMA_VERSION)))
        pre = f.create_group("preprocess")
        pre.create_dataset("scale", data=np.asarray(ws.scale, np.float32))
        pre.create_dataset("offset", data=np.asarray(ws.offset, np.float32))
        pre.attrs.update({name: _fixed(value) for name, value in FIXED_PREPROCESSING.items()})
        pre.attrs.update(crop=_fixed(ws.crop), crop_fraction=float(ws.crop_fraction))
        if ws.labels is not None:
            encoded = [label.encode() for label in ws.labels]
            f.create_dataset("labels", data=np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}"))
        layers = f.create_group("layers")
        for name, layer in ws.layers.items():
            g = layers.create_group(name)
            for tname, arr in layer.tensors().items():
                g.create_dataset(tname, data=arr)
            if layer.bn is not None:
                g["batchnorm"].attrs["epsilon"] = layer.bn.epsilon
        if ws.quantization is not None:
            _write_quantization(f.create_group("quantization"), ws.quantization)
    return buffer.getvalue()


def _write_quantization(root: h5py.Group, q: Quantization) -> None:
    """/quantization/activations/<name> (attributes dtype, scale, zero_point) and
    /quantization/layers/<layer>/<tensor>, each tensor in its own dtype."""
    for name, a in q.activations.items():
        g = root.create_group(f"activations/{name}")
        g.attrs.update(dtype=_fixed(a.dtype), scale=np.float32(a.scale), zero_point=np.int64(a.zero_point))
    for name, layer in q.layers.items():
        g = root.create_group(f"layers/{name}")
        for tname, arr in layer.tensors().items():
            g.create_dataset(tname, data=arr)


def _fixed(text: str) -> np.bytes_:
    """A string as fixed-length UTF-8 bytes. Variable-length strings live in HDF5's global
    heap, and libhdf5 (1.14) loops forever reading one from a heap with a zeroed range
    (measured: 22 of 60 zeroed ranges in the heap hung the reader); fixed-length strings
    are stored in place, so a damaged file reads back as a refusal, not a hang. Files
    written before schema version 3 keep their variable-length strings and still read."""
    return np.bytes_(text.encode())


def _text(value) -> str:
    """A string attribute of either kind as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_mnv2(f: h5py.File) -> bool:
    return "format" in f.attrs and _text(f.attrs["format"]) == FORMAT


def read_mnv2(path) -> WeightSet:
    """Read and validate an mnv2.h5 file."""
    try:
        with h5py.File(path, "r") as f:
            if not is_mnv2(f):
                raise WeightFileError(f"{path}: an HDF5 file, but not an mnv2engine weight file "
                                      "(convert it first: mnv2 convert SRC DST)")
            ws, version, stored = _read_open(f)
    except FileNotFoundError:
        raise WeightFileError(f"{path}: no such file") from None
    except WeightFileError as e:
        raise WeightFileError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        # h5py reports a damaged file with any of these, at open or at first access
        raise WeightFileError(f"{path}: damaged or incomplete mnv2 file ({type(e).__name__}: {e})") from None
    try:
        validate(ws)
    except WeightFileError as e:
        raise WeightFileError(f"{path}: {e}") from None
    _verify(path, ws, version, stored)
    return ws


def _verify(path, ws: WeightSet, version: int, stored) -> None:
    """Refuse a file whose content differs from what convert wrote. A version-1 file has
    no digest: it loads, with a warning that says how to add one."""
    if version == 1 and stored is not None:  # no version-1 file carried one: the version was edited
        raise WeightFileError(f"{path}: damaged mnv2 file: schema version 1, which had no sha256 digest, "
                              "yet the file carries one")
    if version == 1:
        warnings.warn(f"{path}: written before mnv2.h5 carried a sha256 digest (schema version 1), so "
                      f"damage to it cannot be detected; re-convert it to add one: mnv2 convert {path} NEW.h5",
                      UnverifiedWeightsWarning, stacklevel=3)
        return
    if stored is None:
        raise WeightFileError(f"{path}: damaged mnv2 file: its sha256 digest is missing")
    if not isinstance(stored, str) or stored != weightset_digest(ws, version):
        raise WeightFileError(f"{path}: damaged mnv2 file: its tensors or metadata differ from the sha256 "
                              "digest written when it was converted; convert it again from the original weights")


def _read_open(f: h5py.File) -> tuple[WeightSet, int, object]:
    """The WeightSet, the schema version and the stored digest (None where absent)."""
    version = int(f.attrs["schema_version"])
    if version > SCHEMA_VERSION:
        raise WeightFileError(f"schema version {version} is newer than this mnv2engine reads "
                              f"({SCHEMA_VERSION}); upgrade mnv2engine")
    if version < 1:
        raise WeightFileError(f"schema version {version}: no such version (damaged file?)")
    pre = f["preprocess"].attrs
    for name, supported in FIXED_PREPROCESSING.items():  # every version wrote them; the engine does only these
        if _text(pre[name]) != supported:
            raise WeightFileError(f"preprocess {name} is {_text(pre[name])!r}, but the engine supports only "
                                  f"{supported!r} (damaged file?)")
    layers = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "kernel" in obj:
            layers[name] = _read_layer(obj)
    f["layers"].visititems(visit)
    _reject_stray_datasets(f["layers"], layers)
    labels = None
    if "labels" in f:
        labels = [s.decode() if isinstance(s, bytes) else str(s) for s in f["labels"][()]]
    size = tuple(int(s) for s in np.atleast_1d(f.attrs["input_size"]))
    ws = WeightSet(alpha=float(f.attrs["alpha"]), size=size, classes=int(f.attrs["classes"]),
                   padding=_text(f.attrs["padding"]), layers=layers,
                   scale=f["preprocess/scale"][()], offset=f["preprocess/offset"][()],
                   labels=labels, source=_text(f.attrs.get("source", "")))
    if version >= 3:
        ws.crop, ws.crop_fraction = _text(pre["crop"]), float(pre["crop_fraction"])
    else:  # written before the recipe: the whole image, as predict then did
        ws.crop, ws.crop_fraction = "none", 1.0
    if "quantization" in f:
        if version < 4:
            raise WeightFileError(f"a /quantization group in a schema version {version} file, which had none "
                                  "(damaged file?)")
        ws.quantization = _read_quantization(f["quantization"])
    stored = f.attrs.get("sha256")
    return ws, version, None if stored is None else _text(stored)


def _read_layer(g: h5py.Group) -> Layer:
    bn = None
    if "batchnorm" in g:
        b = g["batchnorm"]
        bn = BatchNorm(*(b[k][()] for k in BatchNorm.TENSORS), epsilon=float(b.attrs["epsilon"]))
    return Layer(kernel=g["kernel"][()], bias=g["bias"][()] if "bias" in g else None, bn=bn)


def _read_quantization(root: h5py.Group) -> Quantization:
    activations, layers = {}, {}

    def visit_activation(name, obj):
        if isinstance(obj, h5py.Group) and "dtype" in obj.attrs:
            a = obj.attrs
            activations[name] = ActivationQuantization(_text(a["dtype"]), float(np.float32(a["scale"])),
                                                       int(a["zero_point"]))

    def visit_layer(name, obj):
        if isinstance(obj, h5py.Group) and "kernel" in obj:
            missing = [t for t in QuantizedLayer.TENSORS if t not in obj]
            if missing:
                raise WeightFileError(f"quantization/layers/{name}: missing {', '.join(missing)}")
            layers[name] = QuantizedLayer(**{t: obj[t][()] for t in QuantizedLayer.TENSORS})
    for part, visit in (("activations", visit_activation), ("layers", visit_layer)):
        if part not in root:
            raise WeightFileError(f"quantization/{part}: missing")
        root[part].visititems(visit)
    stray = [k for k in root if k not in ("activations", "layers")]
    known = {f"layers/{name}/{t}" for name in layers for t in QuantizedLayer.TENSORS}
    root.visititems(lambda name, obj: stray.append(name)
                    if isinstance(obj, h5py.Dataset) and name not in known else None)
    if stray:
        raise WeightFileError(f"unexpected item(s) in /quantization: {', '.join(stray[:5])}")
    return Quantization(layers=layers, activations=activations)


def _reject_stray_datasets(root: h5py.Group, layers: dict) -> None:
    """A dataset that is not part of a layer we read would be silently ignored: refuse it."""
    known = {f"{name}/{t}" for name, layer in layers.items() for t in layer.tensors()}
    stray = []
    root.visititems(lambda name, obj: stray.append(name)
                    if isinstance(obj, h5py.Dataset) and name not in known else None)
    if stray:
        raise WeightFileError(f"unexpected tensor(s) in the file: {', '.join(stray[:5])}")
