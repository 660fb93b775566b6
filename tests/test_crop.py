"""The crop before the resize, as each source's evaluation recipe does it, written here
independently of mnv2engine.preprocess; recorded per source; crop=False / --no-crop."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine
from mnv2engine.cli import main
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset


def tf_central_crop(img: Image.Image, fraction: float) -> Image.Image:
    """tf.image.central_crop: start = int((size - size * fraction) / 2) on each axis."""
    w, h = img.size
    top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
    return img.crop((left, top, w - left, h - top))


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (150, 217, 3), np.uint8)


def engine_with(crop, fraction, size=96):
    ws = random_weightset(0.35, size, 5, 0, "same")
    ws.crop, ws.crop_fraction = crop, fraction
    return Engine(ws)


def test_central_crop_then_resize_as_tensorflow(image):
    engine = engine_with("central", 0.875)
    want = np.asarray(tf_central_crop(Image.fromarray(image), 0.875).resize((96, 96), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(engine.preprocess(image), want / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("shape", [(150, 217, 3), (217, 150, 3)])
def test_shorter_side_then_centre_crop_as_torchvision(shape):
    from test_torch_reference import torchvision_eval
    image = np.random.default_rng(1).integers(0, 256, shape, np.uint8)
    engine = engine_with("shorter-side", 0.875)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "png")
    want = torchvision_eval(buffer, 96).astype(np.float32)
    np.testing.assert_allclose(engine.preprocess(image), want / 127.5 - 1, atol=1e-6)


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
