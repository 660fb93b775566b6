"""Pick a reader by a file's content, and write mnv2.h5 without ever clobbering a file."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from mnv2engine.errors import EngineError, WeightFileError
from mnv2engine.files import check_destination, reason, temporary, writing

from .h5format import is_mnv2, read_mnv2, write_mnv2
from .labels import read_labels
from .weightset import WeightSet, settled_size, validate

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def detect_format(path) -> str:
    """'mnv2', 'hdf5' (another HDF5 file), 'keras' (a Keras 3 zip), 'torch', 'tflite' or
    'onnx', from the first bytes; 'huggingface' for a folder with config.json."""
    path = Path(path)
    if not path.exists():
        raise WeightFileError(f"{path}: no such file")
    if path.is_dir():
        from .huggingface import is_huggingface
        if is_huggingface(path):
            return "huggingface"
        raise WeightFileError(f"{path}: is a directory, expected a weight file "
                              "(or a Hugging Face save_pretrained folder, with config.json)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read ({reason(e)})") from None
    if not head:
        raise WeightFileError(f"{path}: empty file (0 bytes)")
    if head == HDF5_SIGNATURE:
        import h5py
        try:
            with h5py.File(path, "r") as f:
                return "mnv2" if is_mnv2(f) else "hdf5"
        except OSError as e:
            raise WeightFileError(f"{path}: damaged HDF5 file ({e})") from None
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":  # ModelProto starts with ir_version (field 1)
        return "onnx"
    if head[:2] == b"PK" and _is_keras_zip(path):
        return "keras"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle
        return "torch"
    raise WeightFileError(f"{path}: unknown weight file format (expected mnv2.h5, a PyTorch "
                          f".pth state_dict, a TFLite flatbuffer, a Keras .h5 or .keras, or an ONNX model)")


def _is_keras_zip(path) -> bool:
    """A Keras 3 `.keras` file holds config.json and model.weights.h5 at its root; a torch
    archive holds <name>/data.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            return {"config.json", "model.weights.h5"} <= set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_any(path, size=None, labels=None) -> WeightSet:
    """Read any supported weight file into a validated WeightSet.

    `size` is the input size to record where the source does not say (default 224); where
    it does, a different `size` is refused. `labels` a text file of class names, for
    sources that carry none.
    """
    fmt = detect_format(path)
    if fmt == "mnv2":
        ws = read_mnv2(path)
        ws.size = settled_size(path, ws.size, size)
    elif fmt == "torch":
        from .torchvision import read_torchvision
        ws = read_torchvision(path, size=settled_size(path, None, size))
    elif fmt == "tflite":
        from .tflite import read_tflite
        ws = read_tflite(path)
        ws.size = settled_size(path, ws.size, size)
    elif fmt == "huggingface":
        from .huggingface import read_huggingface
        ws = read_huggingface(path, size=size)
    elif fmt == "onnx":
        from .onnxgraph import read_onnx
        ws = read_onnx(path, size=size)
    elif fmt == "keras":
        from .keras import read_keras_zip
        ws = read_keras_zip(path, size=size)
    else:  # another HDF5 file: the Keras formats are the ones we know
        from .keras import read_keras
        ws = read_keras(path, size=size)
    if labels is not None:
        ws.labels = read_labels(labels, ws.classes)
    validate(ws)
    return ws


def convert(src, dst, *, force: bool = False, size=None, labels=None) -> WeightSet:
    """Convert any supported weight file to mnv2.h5 at `dst`.

    Writes to a temporary file beside `dst` and renames it into place, so a failed or
    interrupted conversion never leaves a half-written or clobbered destination
    (mnv2engine/files.py). Refuses to overwrite an existing `dst` unless `force`.
    """
    dst = Path(dst)
    check_destination(dst)
    if dst.exists() and not force:
        raise EngineError(f"{dst}: already exists (use --force / force=True to overwrite)")
    if Path(src).resolve() == dst.resolve():
        raise EngineError(f"{dst}: source and destination are the same file")
    ws = read_any(src, size=size, labels=labels)
    with temporary(dst) as tmp, writing(dst):
        write_mnv2(ws, tmp)
        os.replace(tmp, dst)
    return ws
