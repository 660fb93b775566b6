"""The crop before the resize, as each source's evaluation recipe does it, written here
from the frameworks' own code (not from mnv2engine.preprocess); recorded per source;
crop=False / --no-crop."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine
from mnv2engine.cli import main
from mnv2engine.preprocess import cropped
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset


# -- the frameworks' crops, from their code --------------------------------------------
def tf_central_crop(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """tf.image.central_crop (tensorflow/python/ops/image_ops_impl.py), a static shape:
    per axis bbox_start = int((float(n) - float(n) * fraction) / 2) and
    bbox_size = n - bbox_start * 2, then array_ops.slice(begin, size)."""
    begin, size = [], []
    for n in pixels.shape[:2]:
        start = int((float(n) - float(n) * fraction) / 2)
        begin.append(start)
        size.append(n - start * 2)
    return pixels[begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]


def torchvision_resize(img: Image.Image, size: int) -> Image.Image:
    """transforms.Resize(size) of a PIL image, bilinear: functional._compute_resized_output_size,
    the shorter side to `size` and the longer int(size * long / short) (truncated)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), Image.BILINEAR)


def torchvision_center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transforms.CenterCrop((height, width)) (functional.center_crop): crop_top =
    int(round((image_height - crop_height) / 2.0)), the same for the left; Python's round
    takes a half to the even side."""
    top = int(round((pixels.shape[0] - height) / 2.0))
    left = int(round((pixels.shape[1] - width) / 2.0))
    return pixels[top:top + height, left:left + width]


def transformers_center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers.image_transforms.center_crop: top = (orig_height - crop_height) // 2,
    the same for the left (an odd margin leaves the extra pixel at the bottom / right)."""
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return pixels[top:top + height, left:left + width]


def recipe(pixels: np.ndarray, crop: str, fraction: float, height: int, width: int) -> np.ndarray:
    """Each source's evaluation input at (height, width), uint8 [height, width, 3]. The
    shorter-side recipes resize the shorter side to the input size / fraction (224 -> 256);
    for a non-square input, the longer input side's, so that the crop fits either way."""
    def resized(p):
        return np.asarray(Image.fromarray(p).resize((width, height), Image.BILINEAR))
    if crop == "central":  # TF / Keras: central_crop, then a resize to the input size
        return resized(tf_central_crop(pixels, fraction))
    if crop == "none":
        return resized(pixels)
    shorter = np.asarray(torchvision_resize(Image.fromarray(pixels), round(max(height, width) / fraction)))
    centre = torchvision_center_crop if crop == "shorter-side" else transformers_center_crop
    return centre(shorter, height, width)


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (150, 217, 3), np.uint8)


def engine_with(crop, fraction, size=96):
    ws = random_weightset(0.35, size, 5, 0, "same")
    ws.crop, ws.crop_fraction = crop, fraction
    return Engine(ws)


def test_central_crop_then_resize_as_tensorflow(image):
    engine = engine_with("central", 0.875)
    want = recipe(image, "central", 0.875, 96, 96).astype(np.float32)
    np.testing.assert_allclose(engine.preprocess(image), want / 127.5 - 1, atol=1e-6)


# (150, 218): the longer side int(110 * 218 / 150) = 159, rounded 160; its crop margin 63
# is odd, half of it 31.5 (round: 32, floor: 31). (150, 217): 159.1, margin 63.
# (101, 64) and (64, 33): odd sides, a small image enlarged.
IMAGES = [(150, 218), (218, 150), (150, 217), (101, 64), (64, 33)]
SIZES = [(96, 96), (96, 128), (128, 96), (97, 113)]


@pytest.fixture(scope="module")
def engines():
    """One engine per recipe, at 96x96 (the size is given per call)."""
    out = {}
    for crop in ("central", "shorter-side", "shorter-side-floor", "none"):
        ws = random_weightset(0.35, 96, 5, 0, "same")
        ws.crop, ws.crop_fraction = crop, 0.875
        out[crop] = Engine(ws)
    return out


@pytest.mark.parametrize("crop", ["central", "shorter-side", "shorter-side-floor", "none"])
def test_every_recipe_on_non_square_images_and_sizes(engines, crop):
    """Each recipe against the frameworks' code: tall and wide images, square and
    non-square input sizes (height != width, either way round)."""
    for shape in IMAGES:
        image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), np.uint8)
        for height, width in SIZES:
            want = recipe(image, crop, 0.875, height, width).astype(np.float32) / 127.5 - 1
            got = engines[crop].preprocess(image, size=(height, width))
            assert got.shape == (height, width, 3), (shape, height, width)
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"image {shape}, size {(height, width)}")


def test_the_images_reach_where_near_misses_differ():
    """Among IMAGES at 96 (shorter side 110): a longer side whose truncation and rounding
    differ, and an odd crop margin whose half torchvision rounds up (the floor would not)."""
    longer = [110 * max(h, w) / min(h, w) for h, w in IMAGES]
    assert any(int(n) != round(n) for n in longer)
    assert any(round((int(n) - 96) / 2) != (int(n) - 96) // 2 for n in longer)


# Odd and even sides, small and large; fractions whose margin is a half (33 * 0.5),
# below a half (217 * 0.875: 13.56) and exact in decimal but not in binary (100 * 0.9).
CENTRAL_SIDES = (33, 64, 100, 101, 150, 217)
FRACTIONS = (1.0, 0.95, 0.9, 0.875, 0.7, 0.66, 0.5, 0.3)


def test_central_crop_as_tensorflow_at_every_side_and_fraction():
    """The crop box is checked exactly: the crop is resized to a size of its own (37x41),
    so a box one pixel off, or one pixel short, changes the noise image's pixels."""
    rng = np.random.default_rng(5)
    for h in CENTRAL_SIDES:
        for w in CENTRAL_SIDES[::-1]:
            image = rng.integers(0, 256, (h, w, 3), np.uint8)
            for fraction in FRACTIONS:
                want = recipe(image, "central", fraction, 37, 41)
                got = np.asarray(cropped(Image.fromarray(image), (37, 41), "central", fraction))
                np.testing.assert_array_equal(got, want, err_msg=f"image {h}x{w}, fraction {fraction}")


def test_the_central_cases_tell_tensorflows_formula_from_its_near_misses():
    """Each near-miss of TF's bbox_start (and of its size, n - 2 * start) disagrees with it
    somewhere among the cases above, so the test above would see it."""
    def tf(n, f):
        start = int((float(n) - float(n) * f) / 2)
        return start, n - 2 * start
    near_misses = {
        "rounded start": lambda n, f: round((n - n * f) / 2),
        "ceiling start": lambda n, f: math.ceil((n - n * f) / 2),
        "start from int(n * f)": lambda n, f: (n - int(n * f)) // 2,
        "start from n * (1 - f)": lambda n, f: int(n * (1 - f) / 2),
    }
    cases = [(n, f) for n in CENTRAL_SIDES for f in FRACTIONS]
    for name, start in near_misses.items():
        assert any(start(n, f) != tf(n, f)[0] for n, f in cases), name
    assert any(int(n * f) != tf(n, f)[1] for n, f in cases)  # size int(n * f) instead of n - 2 * start


def test_crop_false_resizes_the_whole_image(image):
    engine = engine_with("central", 0.875)
    want = np.asarray(Image.fromarray(image).resize((96, 96), Image.BILINEAR), np.float32) / 127.5 - 1
    np.testing.assert_allclose(engine.preprocess(image, crop=False), want, atol=1e-6)
    assert not np.allclose(engine.preprocess(image), want, atol=1e-3)  # the crop does change the input


def test_predict_no_crop_on_the_command_line(tmp_path, image, capsys):
    engine = engine_with("central", 0.5)
    write_mnv2(engine.weights, tmp_path / "m.h5")
    Image.fromarray(image).save(tmp_path / "a.png")
    for flags, crop in (([], True), (["--no-crop"], False)):
        assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "m.h5"), "--top", "5",
                     "--json", *flags]) == 0
        got = [(t["index"], t["probability"]) for t in json.loads(capsys.readouterr().out)[0]["top"]]
        want = [(i, round(p, 6)) for i, _, p in engine.predict(image, top=5, crop=crop)]
        assert got == want
