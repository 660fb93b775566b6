"""Bad images, bad weight files, interrupted conversions: a clear EngineError every time,
and nothing lost."""
import importlib

import h5py
import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine, EngineError, InputError, WeightFileError, convert
from mnv2engine.weights import read_mnv2, write_mnv2
from mnv2engine.weights.random import random_weightset

SIZE = 32


@pytest.fixture(scope="module")
def engine():
    return Engine.random(alpha=0.35, size=SIZE, classes=6, seed=2)


def rgb(h=20, w=30):
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "1"])
def test_every_pil_mode_is_converted_to_rgb(engine, mode):
    img = Image.fromarray(rgb()).convert(mode) if mode != "I;16" else Image.new("I;16", (30, 20), 1000)
    top = engine.predict(img, top=2)
    assert len(top) == 2 and all(0 <= p <= 1 for _, _, p in top)


def test_saved_formats_and_modes_load_from_disk(engine, tmp_path):
    for mode, name in [("P", "p.png"), ("L", "g.jpg"), ("RGBA", "a.png"), ("CMYK", "c.jpg")]:
        Image.fromarray(rgb()).convert(mode).save(tmp_path / name)
        assert len(engine.predict(tmp_path / name)) == 5


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (7, 3000, 3)])
def test_tiny_and_extreme_aspect_images(engine, shape):
    assert len(engine.predict(np.zeros(shape, np.uint8))) == 5


def test_a_huge_image_is_resized_not_refused(engine):
    big = np.zeros((10000, 10000, 3), np.uint8)  # 300 MB, past Pillow's bomb warning
    assert len(engine.predict(big)) == 5


def test_strided_and_noncontiguous_uint8_arrays(engine):
    base = rgb(40, 60)
    assert engine.predict(base[::2, ::2]) == engine.predict(np.ascontiguousarray(base[::2, ::2]))
    assert engine.predict(np.asfortranarray(base)) == engine.predict(base)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 3, 1), np.uint8), "HxWx3"),
    (np.zeros((10,), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 3), np.int64), "uint8"),
    (np.zeros((10, 10, 3), ">u2"), "uint8"),
    (np.full((10, 10, 3), 300.0), "uint8"),
    (np.full((10, 10, 3), np.nan), "uint8"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
])
def test_bad_arrays_are_refused_with_the_reason(engine, bad, message):
    with pytest.raises(InputError, match=message):
        engine.predict(bad)


def test_a_batch_with_mixed_sizes_and_one_bad_image(engine):
    good = engine.predict([rgb(20, 30), rgb(50, 10)])
    assert len(good) == 2
    with pytest.raises(InputError, match="HxWx3"):
        engine.predict([rgb(), np.zeros((5, 5, 2), np.uint8)])


def test_truncated_jpeg_and_fake_jpeg(engine, tmp_path):
    Image.fromarray(rgb(64, 64)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        engine.predict(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        engine.predict(tmp_path / "text.jpg")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (0, 3, 4, 1), (1, -1, -1, 2), (1, -1, -2, 2)])
@pytest.mark.parametrize("layout", ["in place", "strided", "big-endian"])
def test_forward_rejects_nan_and_inf_anywhere(engine, bad, where, layout):
    """Every position of the last 64 floats is a different lane of the check's tail (a
    batch of two 3-channel images is not a multiple of 64); the first, of its main loop.
    Read in place and copied inputs take different checks (Engine._finite)."""
    x = np.zeros((2, SIZE, SIZE + 1, 3), np.float32)
    x[where] = bad
    if layout == "strided":
        x = np.asfortranarray(x)
    elif layout == "big-endian":
        x = x.astype(">f4")
    with pytest.raises(InputError, match="NaN or infinite"):
        engine.forward(x)
    x[where] = 1e38  # large but finite: accepted
    assert np.isfinite(engine.forward(x)).all()


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "w.h5"
    write_mnv2(random_weightset(alpha=0.35, size=SIZE, classes=6), path)
    return path


def test_tensor_of_wrong_dtype(weights_file):
    with h5py.File(weights_file, "r+") as f:
        data = f["layers/head/kernel"][()]
        del f["layers/head/kernel"]
        f["layers/head/kernel"] = data.astype(np.float64)
    with pytest.raises(WeightFileError, match="head/kernel: expected float32"):
        read_mnv2(weights_file)


def test_labels_that_do_not_fit(weights_file):
    with h5py.File(weights_file, "r+") as f:
        del f["labels"]
        f["labels"] = np.array(["a", "b"], dtype=h5py.string_dtype())
    with pytest.raises(WeightFileError, match="2 labels for 6 classes"):
        read_mnv2(weights_file)


def test_truncated_weight_file(weights_file, tmp_path):
    data = weights_file.read_bytes()
    for cut in (len(data) // 2, 4096, 100):
        (tmp_path / "cut.h5").write_bytes(data[:cut])
        with pytest.raises(WeightFileError):
            Engine.load(tmp_path / "cut.h5")


def test_interrupted_conversion_leaves_the_destination_alone(weights_file, tmp_path, monkeypatch):
    dst = tmp_path / "dst.h5"
    write_mnv2(random_weightset(alpha=0.5, size=SIZE, classes=2), dst)
    before = dst.read_bytes()

    def write_then_die(ws, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module("mnv2engine.weights.convert"), "write_mnv2", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert(weights_file, dst, force=True)
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_convert_refuses_to_write_over_its_source(weights_file):
    with pytest.raises(EngineError, match="same file"):
        convert(weights_file, weights_file, force=True)


def test_a_decompression_bomb_is_refused(engine, tmp_path, monkeypatch):
    Image.fromarray(rgb(200, 200)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 200x200 is then past twice the limit
    with pytest.raises(InputError, match="too many pixels"):
        engine.predict(tmp_path / "bomb.png")
