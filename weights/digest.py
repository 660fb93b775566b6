"""The sha256 digest of a WeightSet, which mnv2.h5 stores so that damage cannot load silently.

HDF5 checks nothing by itself here: contiguous datasets and attributes carry no checksum,
so a flipped bit in a tensor, or in an attribute such as `epsilon`, reads back as another
valid number. The digest covers everything `read_mnv2` returns (the tensors, the
architecture, the preprocessing, labels, source), hashed from the values rather than the
file's bytes, so it does not depend on how h5py lays the file out.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np


def weightset_digest(ws, version: int) -> str:
    """Hex sha256 over the metadata (as canonical JSON), then every tensor in name order:
    its name, dtype and shape as JSON, then its little-endian float32 bytes. Schema
    version 3 added the crop recipe to the metadata; a version-2 file's digest is
    computed as it was written. Version 4 adds the version itself and a quantized model's quantization: each
    activation's dtype, scale and zero point in the metadata, and its integer layers'
    tensors in their own dtypes (little-endian)."""
    h = hashlib.sha256()
    meta = {"alpha": float(ws.alpha), "size": [int(s) for s in ws.size], "classes": int(ws.classes),
            "padding": str(ws.padding), "labels": ws.labels, "source": str(ws.source),
            "epsilon": {name: float(layer.bn.epsilon) for name, layer in ws.layers.items() if layer.bn}}
    if version >= 3:
        meta.update(crop=str(ws.crop), crop_fraction=float(ws.crop_fraction))
    if version >= 4:  # a version edited to an older one no longer verifies
        meta["schema_version"] = version
    q = getattr(ws, "quantization", None)
    if version >= 4 and q is not None:
        meta["quantization"] = {name: [str(a.dtype), float(a.scale), int(a.zero_point)]
                                for name, a in q.activations.items()}
    h.update(json.dumps(meta, sort_keys=True).encode())
    tensors = {"preprocess/scale": ws.scale, "preprocess/offset": ws.offset}
    tensors.update({f"layers/{name}/{t}": arr for name, layer in ws.layers.items()
                    for t, arr in layer.tensors().items()})
    integer = {}
    if version >= 4 and q is not None:
        integer = {f"quantization/layers/{name}/{t}": arr for name, layer in q.layers.items()
                   for t, arr in layer.tensors().items()}
        tensors.update(integer)
    for name in sorted(tensors):
        dtype = np.asarray(tensors[name]).dtype.newbyteorder("<") if name in integer else "<f4"
        arr = np.ascontiguousarray(tensors[name], dtype)
        h.update(json.dumps([name, arr.dtype.str, arr.shape]).encode())
        h.update(arr.tobytes())
    return h.hexdigest()
