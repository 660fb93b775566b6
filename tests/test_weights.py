"""mnv2.h5 round trips, format detection by content, and refusals that name the problem."""
import re
import shutil
import warnings

import h5py
import numpy as np
import pytest

from mnv2engine import EngineError, UnverifiedWeightsWarning, WeightFileError, convert
from mnv2engine.weights import detect_format, read_mnv2, write_mnv2
from mnv2engine.weights.digest import weightset_digest
from mnv2engine.weights.h5format import _read_open
from mnv2engine.weights.random import random_quantized_weightset, random_weightset

from conftest import require

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2, randomized


@pytest.fixture(scope="module")
def ws():
    return random_weightset(alpha=0.5, size=64, classes=7, seed=3)


@pytest.fixture
def h5file(tmp_path, ws):
    path = tmp_path / "m.h5"
    write_mnv2(ws, path)
    return path


def test_write_then_read_is_bit_for_bit(ws, h5file):
    back = read_mnv2(h5file)
    assert (back.alpha, tuple(back.size), back.classes, back.padding) == (ws.alpha, tuple(ws.size), ws.classes, ws.padding)
    assert back.labels == ws.labels
    assert np.array_equal(back.scale, ws.scale) and np.array_equal(back.offset, ws.offset)
    assert back.layers.keys() == ws.layers.keys()
    for name, layer in ws.layers.items():
        got = back.layers[name].tensors()
        for tname, arr in layer.tensors().items():
            assert got[tname].dtype == np.float32 and got[tname].tobytes() == arr.tobytes(), f"{name}/{tname}"
        if layer.bn is not None:
            assert back.layers[name].bn.epsilon == layer.bn.epsilon


def test_format_is_detected_from_content_not_name(tmp_path, ws):
    write_mnv2(ws, tmp_path / "weights.pth")  # an HDF5 file with a misleading name
    assert detect_format(tmp_path / "weights.pth") == "mnv2"
    torch.save(randomized(MobileNetV2(width_mult=0.35, num_classes=5), 0).state_dict(), tmp_path / "sd.h5")
    assert detect_format(tmp_path / "sd.h5") == "torch"
    out = convert(tmp_path / "sd.h5", tmp_path / "out.h5")
    assert (out.alpha, out.classes, out.padding) == (0.35, 5, "symmetric")


def _rewrite(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("damage,message", [
    (lambda f: f.attrs.__setitem__("schema_version", 99), "newer"),
    (lambda f: f.attrs.__setitem__("alpha", 1.0), "expected shape"),
    (lambda f: f.__delitem__("layers/block3/expand"), "missing layer"),
    (lambda f: f.create_dataset("layers/block3/expand/extra", data=np.zeros(3, np.float32)), "unexpected tensor"),
    (lambda f: f["layers/head/kernel"].__setitem__((0, 0), np.nan), "NaN"),
    (lambda f: f.attrs.__setitem__("padding", "valid"), "padding"),
])
def test_damaged_files_are_refused_with_the_reason(h5file, damage, message):
    _rewrite(h5file, damage)
    with pytest.raises(WeightFileError, match=message):
        read_mnv2(h5file)


def test_tensor_of_wrong_shape_names_the_layer(h5file):
    def swap(f):
        del f["layers/block5/depthwise/kernel"]
        f.create_dataset("layers/block5/depthwise/kernel", data=np.zeros((3, 3, 7), np.float32))
    _rewrite(h5file, swap)
    with pytest.raises(WeightFileError, match=r"block5/depthwise/kernel.*\(3, 3, 7\)"):
        read_mnv2(h5file)


@pytest.mark.parametrize("tensor", ["layers/block3/expand/kernel", "layers/block9/depthwise/batchnorm/var",
                                    "layers/classifier/bias", "preprocess/offset"])
def test_a_flipped_bit_in_a_tensor_is_refused_as_damage(h5file, tensor):
    """The lowest mantissa bit of one value: still a finite float32 of the right shape,
    which only the digest tells from the written one."""
    with h5py.File(h5file, "r") as f:
        offset = f[tensor].id.get_offset()  # contiguous storage: the first value's first byte
    blob = bytearray(h5file.read_bytes())
    blob[offset] ^= 1
    h5file.write_bytes(bytes(blob))
    with pytest.raises(WeightFileError, match=re.escape(str(h5file)) + ": damaged mnv2 file"):
        read_mnv2(h5file)


@pytest.mark.parametrize("edit", [
    lambda f: f["layers/block2/project/batchnorm"].attrs.__setitem__("epsilon", 2e-3),
    lambda f: f.attrs.__setitem__("padding", "symmetric"),  # valid, and shapes do not tell
    lambda f: f["labels"].__setitem__(0, "cat"),
    lambda f: f.attrs.__setitem__("sha256", "0" * 64),
    lambda f: f["preprocess"].attrs.__setitem__("crop", "none"),
    lambda f: f["preprocess"].attrs.__setitem__("crop_fraction", 0.9),
], ids=["epsilon", "padding", "label", "digest", "crop", "crop-fraction"])
def test_valid_looking_metadata_changes_are_refused_as_damage(h5file, edit):
    _rewrite(h5file, edit)
    with pytest.raises(WeightFileError, match="damaged mnv2 file: its tensors or metadata differ"):
        read_mnv2(h5file)


def test_a_missing_digest_is_damage(h5file):
    _rewrite(h5file, lambda f: f.attrs.__delitem__("sha256"))
    with pytest.raises(WeightFileError, match="damaged mnv2 file: its sha256 digest is missing"):
        read_mnv2(h5file)


def test_a_version_3_file_loads_verified(h5file, ws):
    """Written before the quantization (schema 3): its digest is checked as it was computed
    then, and it reads as the version 4 file it was made from; a /quantization group in it
    is refused."""
    _rewrite(h5file, lambda f: f.attrs.__setitem__("sha256", weightset_digest(ws, version=3)))
    with pytest.raises(WeightFileError, match="damaged mnv2 file: its tensors or metadata differ"):
        read_mnv2(h5file)  # a version 4 digest covers the version: still 4, so this one is wrong
    _rewrite(h5file, lambda f: f.attrs.__setitem__("schema_version", 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = read_mnv2(h5file)
    assert (old.crop, old.crop_fraction, old.quantization) == (ws.crop, ws.crop_fraction, None)
    assert old.layers["head"].kernel.tobytes() == ws.layers["head"].kernel.tobytes()
    _rewrite(h5file, lambda f: f.create_group("quantization"))
    with pytest.raises(WeightFileError, match="a /quantization group in a schema version 3 file"):
        read_mnv2(h5file)


def test_a_version_2_file_loads_verified_and_crops_nothing(h5file, ws):
    """Written before the crop recipe (schema 2): its digest is checked as it was
    computed then, and predict resizes the whole image, as it did then."""
    def as_version_2(f):
        del f["preprocess"].attrs["crop"], f["preprocess"].attrs["crop_fraction"]
        f.attrs["schema_version"] = 2
        f.attrs["sha256"] = weightset_digest(ws, version=2)
    _rewrite(h5file, as_version_2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = read_mnv2(h5file)
    assert (old.crop, old.crop_fraction) == ("none", 1.0)
    _rewrite(h5file, lambda f: f.attrs.__setitem__("alpha", 0.35 if ws.alpha != 0.35 else 0.5))
    with pytest.raises(WeightFileError):
        read_mnv2(h5file)


def test_a_file_from_before_the_digest_loads_with_a_warning_saying_to_reconvert(h5file, ws, tmp_path):
    def as_version_1(f):
        del f.attrs["sha256"]
        f.attrs["schema_version"] = 1
    _rewrite(h5file, as_version_1)
    with pytest.warns(UnverifiedWeightsWarning, match=re.escape(str(h5file)) + r": written before .* mnv2 convert"):
        old = read_mnv2(h5file)
    assert old.layers["head"].kernel.tobytes() == ws.layers["head"].kernel.tobytes()
    with pytest.warns(UnverifiedWeightsWarning):
        convert(h5file, tmp_path / "new.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mnv2(tmp_path / "new.h5")  # re-converted: a digest, and no warning


@pytest.mark.parametrize("content,message", [
    (b"", "empty"), (b"\x00\x01garbage" * 100, "unknown weight file format"),
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 50, "damaged HDF5"),
])
def test_unreadable_files(tmp_path, content, message):
    (tmp_path / "bad.h5").write_bytes(content)
    with pytest.raises(WeightFileError, match=message):
        convert(tmp_path / "bad.h5", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_foreign_hdf5_and_missing_paths(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WeightFileError, match="not an mnv2engine weight file"):
        read_mnv2(tmp_path / "other.h5")
    with pytest.raises(WeightFileError, match="no such file"):
        convert(tmp_path / "nope.pth", tmp_path / "out.h5")
    with pytest.raises(WeightFileError, match="directory"):
        convert(tmp_path, tmp_path / "out.h5")


def test_convert_refuses_to_overwrite_unless_forced(tmp_path, h5file):
    dst = tmp_path / "dst.h5"
    dst.write_bytes(b"precious")
    with pytest.raises(EngineError, match="already exists"):
        convert(h5file, dst)
    assert dst.read_bytes() == b"precious"
    convert(h5file, dst, force=True)
    assert read_mnv2(dst).alpha == 0.5


def test_torch_file_with_pickled_object_is_refused_without_running_it(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "pwned"),))
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.0.weight": Boom()}))
    with pytest.raises(WeightFileError, match="nothing is executed"):
        convert(tmp_path / "evil.pth", tmp_path / "out.h5")
    assert not (tmp_path / "pwned").exists()


def test_torch_state_dict_with_extra_or_missing_tensors(tmp_path):
    sd = randomized(MobileNetV2(width_mult=0.35, num_classes=5), 0).state_dict()
    torch.save({**sd, "features.99.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match="features.99.weight"):
        convert(tmp_path / "extra.pth", tmp_path / "a.h5")
    del sd["features.5.conv.1.1.running_var"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match="block4/depthwise.*running_var"):
        convert(tmp_path / "missing.pth", tmp_path / "b.h5")


def test_strings_are_stored_in_place_so_a_damaged_file_cannot_hang_the_reader(tmp_path):
    """Variable-length strings live in HDF5's global heap ("GCOL"), and libhdf5 loops
    forever reading one from a heap with a zeroed range: mnv2.h5 keeps none."""
    ws = random_weightset(alpha=0.35, size=32, classes=3, seed=1)
    ws.labels, ws.source = ["naïve", "", "日本"], "from /tmp/café.pth"
    write_mnv2(ws, tmp_path / "m.h5")
    assert b"GCOL" not in (tmp_path / "m.h5").read_bytes()
    back = read_mnv2(tmp_path / "m.h5")
    assert (back.labels, back.source, back.padding, back.crop) == (ws.labels, ws.source, ws.padding, ws.crop)


# -- every field of the file, edited in turn ---------------------------------------------

DIGEST_MISMATCH = "damaged mnv2 file: its tensors or metadata differ from the sha256"
# Fields whose edit is refused by a check of its own before the digest is compared, with
# that check's message: each still refuses every edit, only not as a digest mismatch.
CHECKED_OTHERWISE = {
    "/format": ("names the file as an mnv2engine one", "not an mnv2engine weight file"),
    "/schema_version": ("chooses how the file is read and its digest computed: a newer one is refused, "
                        "an older one reads the digest as that version wrote it",
                        f"newer than this mnv2engine reads|{DIGEST_MISMATCH}|schema version 1, .*sha256|"
                        "a /quantization group in a schema version"),
    "/alpha": ("sets every channel count: another alpha disagrees with the tensors' shapes",
               "invalid architecture|expected shape"),
    "/classes": ("sets the classifier's width and the number of labels", "expected shape"),
    "preprocess/channel_order": ("the engine feeds RGB only: any other order is refused",
                                 "channel_order .* only 'RGB'"),
    "preprocess/resize": ("the engine resizes bilinearly only: any other resize is refused",
                          "resize .* only 'bilinear'"),
}
# Other values each field may take, from the schema (weights/README.md); every other field
# gets values of its own dtype and shape: a float's next value toward 0, an integer's
# neighbours, a string reversed.
SCHEMA_VALUES = {
    "/schema_version": (1, 2, 3, 4),
    "/padding": ("same", "symmetric"),
    "preprocess/crop": ("central", "shorter-side", "shorter-side-floor", "none"),
    "preprocess/channel_order": ("BGR",),
    "preprocess/resize": ("nearest", "bicubic"),
}


def file_fields(path) -> list[tuple[str, str | None]]:
    """Every field of the file, found by walking it: (object, attribute) for each attribute
    of the root and of every group and dataset, (dataset, None) for each dataset's values.
    Of the layers, the first of each kind (stem, block#/expand, ..., classifier): a read
    takes ~0.1 s, and the reader and the digest treat the layers of a kind alike."""
    with h5py.File(path, "r") as f:
        found = [("/", name) for name in f.attrs]

        def visit(name, obj):
            found.extend((name, attr) for attr in obj.attrs)
            if isinstance(obj, h5py.Dataset):
                found.append((name, None))
        f.visititems(visit)
    kinds = {}
    for obj, attr in found:
        kinds.setdefault((re.sub(r"block\d+", "block#", obj), attr), (obj, attr))
    return list(kinds.values())


def field_name(obj: str, attr: str | None) -> str:
    """'/alpha' for a root attribute, 'preprocess/crop' for a group's, 'labels' for a dataset."""
    return obj if attr is None else f"/{attr}" if obj == "/" else f"{obj}/{attr}"


def _other_text(text: bytes) -> bytes:
    """Another string of the same length: reversed, or its first byte changed."""
    flipped = text[::-1]
    return flipped if flipped != text else bytes([text[0] ^ 1]) + text[1:] if text else b"x"


def edits(value, schema_values=()) -> list:
    """Values that differ from `value`: the schema's other values for the field where it
    lists them, else values of its dtype and shape with one element changed (the first,
    and of a short array the last too)."""
    if schema_values:
        plain = value.item() if isinstance(value, np.generic) else value
        encoded = [v.encode() if isinstance(v, str) else v for v in schema_values]
        return [np.bytes_(v) if isinstance(v, bytes) else v for v in encoded if v != plain]
    arr = np.array(value)
    out = []
    for at in sorted({0, arr.size - 1 if arr.size <= 4 else 0}):
        old = arr.reshape(-1)[at]
        if arr.dtype.kind == "f":
            changes = [np.nextafter(old, 0 if old else 1, dtype=arr.dtype)]
        elif arr.dtype.kind in "iu":
            changes = [old + 1, old - 1]
        elif arr.dtype.kind == "S":
            changes = [_other_text(bytes(old))]
        else:
            raise AssertionError(f"a field of dtype {arr.dtype}: the test needs an edit for it")
        for change in changes:
            changed = arr.copy()
            changed.reshape(-1)[at] = change
            out.append(changed if arr.ndim else changed[()])
    return out


# A quantized file's own checks (weights/quantization.py) refuse many edits of its layers
# before the digest is compared: a weight's scale or value changed no longer dequantizes to
# the float kernel beside it, a zero point may leave its range. There, each edit must be
# refused for some reason, and the digest of what the reader reads must differ from the
# stored one, so that an edit no check catches is still refused.
QUANTIZED_CHECKED = ("quantization/", "layers/")

# the kinds of field the schema describes, which the walk must find, of a float and a quantized file
FLOAT_FIELDS = {"/source", "/sha256", "/input_size", "preprocess/crop_fraction", "preprocess/scale", "labels",
                "layers/classifier/bias", "layers/head/batchnorm/epsilon", "layers/stem/batchnorm/var"}
QUANTIZED_FIELDS = {"layers/classifier/bias", "quantization/activations/input/dtype",
                    "quantization/activations/input/scale", "quantization/activations/pool/zero_point",
                    "quantization/activations/block#/residual/scale", "quantization/activations/softmax/scale",
                    *(f"quantization/layers/stem/{t}" for t in ("kernel", "kernel_scale", "kernel_zero_point",
                                                                "bias", "bias_scale"))}


def digest_of_content(path) -> bool:
    """Whether the digest of what the reader reads from `path` is the one it stores."""
    with h5py.File(path, "r") as f:
        ws, version, stored = _read_open(f)
    return weightset_digest(ws, version) == stored


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized uint8"])
def test_every_field_of_the_file_is_covered(tmp_path, quantized):
    """Each field the walk finds, edited in turn to a valid-looking value (same dtype and
    shape, or another value the schema allows): every edit is refused, as a digest
    mismatch unless CHECKED_OTHERWISE says which check refuses it (of a quantized file's
    layers, see QUANTIZED_CHECKED). Each attribute deleted is refused too: no reader
    default stands in for a lost one."""
    if quantized:  # uint8: per-tensor weights with zero points other than 0, to edit
        ws = random_quantized_weightset(alpha=0.35, size=40, classes=3, seed=5, dtype="uint8")
    else:
        ws = random_weightset(alpha=0.35, size=40, classes=3, seed=5)  # 39 and 41 are valid sizes too
    ws.scale, ws.offset = np.array([0.02, 0.03, 0.04], np.float32), np.array([-1.5, -1.0, -0.5], np.float32)
    original = tmp_path / "original.h5"
    write_mnv2(ws, original)
    assert digest_of_content(original)
    fields = file_fields(original)
    names = {field_name(obj, attr) for obj, attr in fields}
    # the walk proves nothing if it misses the kinds of field the schema describes
    assert (QUANTIZED_FIELDS if quantized else FLOAT_FIELDS) <= {re.sub(r"block\d+", "block#", n) for n in names}
    assert set(CHECKED_OTHERWISE) | set(SCHEMA_VALUES) <= names
    edited, loaded, wrong, undigested = tmp_path / "edited.h5", [], [], []

    def check(edit, what: str, expected: str, digest: bool = False):
        shutil.copyfile(original, edited)
        with h5py.File(edited, "r+") as f:
            edit(f)
        try:
            read_mnv2(edited)
        except WeightFileError as e:
            if not str(e).startswith(str(edited)) or not re.search(expected, str(e)):
                wrong.append(f"{what}: {e}")
        else:
            loaded.append(what)
        if digest and digest_of_content(edited):
            undigested.append(what)

    for obj, attr in fields:
        field = field_name(obj, attr)
        expected = CHECKED_OTHERWISE.get(field, (None, DIGEST_MISMATCH))[1]
        by_own_checks = quantized and field.startswith(QUANTIZED_CHECKED)
        if by_own_checks:
            expected = "."
        with h5py.File(original, "r") as f:
            value = f[obj].attrs[attr] if attr else f[obj][()]
        for new in edits(value, SCHEMA_VALUES.get(field, ())):
            if attr is None:
                edit = lambda f: f[obj].__setitem__(Ellipsis, new)
            elif np.asarray(new).dtype == np.asarray(value).dtype and np.shape(new) == np.shape(value):
                edit = lambda f: f[obj].attrs.modify(attr, new)  # keeps the stored type
            else:  # another value of the schema, stored as the writer stores it
                edit = lambda f: f[obj].attrs.__setitem__(attr, new)
            check(edit, f"{field} = {new!r}", expected, digest=by_own_checks)
        if attr is not None:
            check(lambda f: f[obj].attrs.__delitem__(attr), f"{field} deleted", ".")
    assert not loaded, f"edits that load as if the file were intact: {loaded}"
    assert not wrong, f"edits refused for another reason than expected: {wrong}"
    assert not undigested, f"edits the digest does not cover: {undigested}"
