"""Keras files that record an input size (`.keras`, full-model `.h5`): the size is read
from the model config as (height, width), a contradicting size is refused, and one
engine per file runs any size against Keras itself."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert

from conftest import close, probabilities, softmax
from test_keras import randomized

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore:You are saving your model as an HDF5 file")

SAVED_AT = 160
# Keras pads a stride-2 conv by the static input size (a model with include_top and
# input_shape=None is fixed at 224), so the reference at each size is a model built at it.
SIZES = (96, 160, 224, 113)


def build(size):
    shape = (size, size, 3) if size else None
    return keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=shape, classes=10,
                                          classifier_activation=None)


@pytest.fixture(scope="module")
def models():
    """The model saved (built at 160), and one at each size with its weights."""
    saved = randomized(build(SAVED_AT), seed=7)
    at = {size: build(size) for size in SIZES if size != SAVED_AT}
    for m in at.values():
        m.set_weights(saved.get_weights())
    return saved, {SAVED_AT: saved, **at}


@pytest.mark.parametrize("name", ["m.keras", "full-model.h5"])
def test_the_recorded_size_is_read_and_any_size_runs(models, tmp_path, name):
    saved, others = models
    saved.save(tmp_path / name)
    ws = convert(tmp_path / name, tmp_path / "mnv2.h5")
    assert ws.size == (SAVED_AT, SAVED_AT) and ws.alpha == 0.35 and ws.classes == 10
    engine = Engine.load(tmp_path / "mnv2.h5")
    assert engine.preprocess(np.zeros((300, 200, 3), np.uint8)).shape == (SAVED_AT, SAVED_AT, 3)
    for size in SIZES:
        x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
        ref = others[size].predict(x, verbose=0)
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
        try:
            close(engine.forward(x), ref)
        except AssertionError as e:
            raise AssertionError(f"size {size}: {e}") from None


@pytest.mark.parametrize("name", ["m.keras", "full-model.h5"])
def test_a_size_that_contradicts_the_file_is_refused_naming_both(models, tmp_path, name):
    models[0].save(tmp_path / name)
    with pytest.raises(WeightFileError, match="records input size 160x160, but size 224x224 was asked for"):
        convert(tmp_path / name, tmp_path / "mnv2.h5", size=224)
    assert not (tmp_path / "mnv2.h5").exists()
    assert convert(tmp_path / name, tmp_path / "mnv2.h5", size=SAVED_AT).size == (SAVED_AT, SAVED_AT)


def test_a_model_of_any_size_takes_the_given_size(tmp_path):
    keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=None, include_top=False,
                                   pooling="avg").save(tmp_path / "any.keras")
    assert convert(tmp_path / "any.keras", tmp_path / "a.h5").size == (224, 224)
    assert convert(tmp_path / "any.keras", tmp_path / "b.h5", size=128).size == (128, 128)


def test_a_mobilenet_v3_keras_file_says_what_it_holds(tmp_path):
    keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3)).save(tmp_path / "v3.keras")
    with pytest.raises(WeightFileError, match="not a Keras MobileNetV2.*Functional model named 'MobileNetV3Small'"):
        convert(tmp_path / "v3.keras", tmp_path / "out.h5")


def test_a_damaged_keras_zip_is_refused(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("model.weights.h5", b"")
    with pytest.raises(WeightFileError, match="damaged or incomplete .keras file"):
        convert(tmp_path / "bad.keras", tmp_path / "out.h5")


# Odd by even: Keras pads each axis of a stride-2 conv by that axis's own parity (correct_pad).
NON_SQUARE = (97, 128)


@pytest.fixture(scope="module")
def non_square(tmp_path_factory, photo_paths):
    """A model built at 97x128 saved in the three layouts; Keras's output for a batch, and
    its probabilities for the photos resized as a Keras user does (load_img's target_size
    is (height, width))."""
    model = randomized(keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=NON_SQUARE + (3,),
                                                      classes=10, classifier_activation=None), seed=13)
    folder = tmp_path_factory.mktemp("non_square")
    model.save(folder / "m.keras")
    model.save(folder / "full-model.h5")
    model.save_weights(folder / "model.weights.h5")
    x = np.random.default_rng(13).uniform(-1, 1, (2,) + NON_SQUARE + (3,)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
    pixels = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=NON_SQUARE, interpolation="bilinear"))
              for p in photo_paths]
    photos = softmax(model.predict(keras.applications.mobilenet_v2.preprocess_input(np.stack(pixels)), verbose=0))
    return folder, x, ref, photos


@pytest.mark.parametrize("name", ["m.keras", "full-model.h5", "model.weights.h5"])
def test_a_non_square_size_is_height_by_width(non_square, tmp_path, name, photo_paths):
    """Recorded as the file has it (weights alone record none: given), run against Keras,
    on a batch and on the photos."""
    folder, x, ref, photos = non_square
    ws = convert(folder / name, tmp_path / "mnv2.h5", size=NON_SQUARE if name == "model.weights.h5" else None)
    assert tuple(ws.size) == NON_SQUARE
    engine = Engine.load(tmp_path / "mnv2.h5")
    assert engine.arch.size == NON_SQUARE
    assert engine.preprocess(np.zeros((300, 200, 3), np.uint8)).shape == NON_SQUARE + (3,)
    close(engine.forward(x), ref)
    close(probabilities(engine.predict(photo_paths, top=10, crop=False), 10), photos)
    if name != "model.weights.h5":
        with pytest.raises(WeightFileError, match="records input size 97x128, but size 128x97 was asked for"):
            convert(folder / name, tmp_path / "other.h5", size=NON_SQUARE[::-1])
