"""Keras files that record an input size (`.keras`, full-model `.h5`): the size is read
from the model config as (height, width), a contradicting size is refused, and one
engine per file runs any size against Keras itself."""
import json
import os
import shutil
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert

from conftest import close, probabilities, require, softmax

keras = require("keras")  # the reference (on torch): without it these tests skip
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_model_of_any_size_takes_the_given_size(tmp_path):
    keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=None, include_top=False,
                                   pooling="avg").save(tmp_path / "any.keras")
    assert convert(tmp_path / "any.keras", tmp_path / "a.h5").size == (224, 224)
    assert convert(tmp_path / "any.keras", tmp_path / "b.h5", size=128).size == (128, 128)
    # an odd size: Keras's own pads for a model of any size, (0, 1), are accepted; the engine
    # pads as TF 'same' for the size it runs (as Keras's model built at that size does)
    assert convert(tmp_path / "any.keras", tmp_path / "c.h5", size=(97, 113)).size == (97, 113)


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


# -- what the model config says, and what it leaves to Keras's defaults ----------------
def edited(src, dst, edit):
    """A copy of a .keras or full-model .h5 file with `edit` applied to its model config
    (as another Keras version or a hand edit may write it), the weights untouched."""
    if src.suffix == ".keras":
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    edit(config)
                    data = json.dumps(config)
                zout.writestr(item, data)
    else:
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            edit(config)
            f.attrs["model_config"] = json.dumps(config)
    return dst


def configs(config, class_name=None, name=None):
    """The layer configs of a model config, of one class or one name."""
    return [layer["config"] for layer in config["config"]["layers"]
            if class_name in (None, layer["class_name"]) and name in (None, layer["name"])]


def omit_defaults(config):
    """What Keras's defaults give back as MobileNetV2 has it, omitted: every BatchNorm's
    epsilon (1e-3) and momentum (irrelevant to inference), every conv's activation (linear)
    and dilation_rate (1), every ReLU's negative_slope and threshold (0)."""
    for cfg in configs(config):
        for key in ("epsilon", "momentum", "activation", "dilation_rate", "negative_slope", "threshold"):
            cfg.pop(key, None)


def epsilon_0_1(config):
    for cfg in configs(config, "BatchNormalization"):
        cfg["epsilon"] = 0.1


def test_the_configs_batchnorm_epsilon_is_used_and_kerass_default_where_omitted(non_square, tmp_path):
    """Converted and loaded by Keras from the same edited file, both must agree: omitted
    attributes are Keras's defaults, an epsilon the config writes is the config's."""
    folder, x, ref, _ = non_square
    outputs = {}
    for edit in (omit_defaults, epsilon_0_1):
        src = edited(folder / "m.keras", tmp_path / f"{edit.__name__}.keras", edit)
        outputs[edit] = keras.saving.load_model(src).predict(x, verbose=0)
        close(Engine(convert(src, tmp_path / f"{edit.__name__}.h5")).forward(x), outputs[edit])
    assert np.abs(outputs[epsilon_0_1] - ref).max() > 0.05 * np.abs(ref).max()  # epsilon 0.1 does matter
    src = edited(folder / "full-model.h5", tmp_path / "epsilon_0_1-full-model.h5", epsilon_0_1)
    close(Engine(convert(src, tmp_path / "from-h5.h5")).forward(x), outputs[epsilon_0_1])


def drop(name, key):
    def edit(config):
        del configs(config, name=name)[0][key]
    return edit


def put(name, key, value):
    def edit(config):
        configs(config, name=name)[0][key] = value
    return edit


# Each: what Keras makes of the file differs from MobileNetV2, so converting it is refused.
REFUSED = {
    "depthwise padding omitted (valid)": (drop("expanded_conv_depthwise", "padding"),
                                          "expanded_conv_depthwise: padding 'valid' (Keras's default"),
    "stem padding omitted (valid)": (drop("Conv1", "padding"), "Conv1: padding 'valid' (Keras's default"),
    "ZeroPadding2D padding omitted (1)": (drop("block_1_pad", "padding"),
                                          "block_1_pad: padding 1 (Keras's default"),
    "ReLU max_value omitted (none)": (drop("block_3_expand_relu", "max_value"),
                                      "block_3_expand_relu: max_value None (Keras's default"),
    "ReLU4": (put("block_2_depthwise_relu", "max_value", 4.0), "block_2_depthwise_relu: max_value 4.0"),
    "strides omitted (1)": (drop("Conv1", "strides"), "Conv1: strides 1 (Keras's default"),
    "depthwise strides": (put("block_6_depthwise", "strides", [2, 1]), "block_6_depthwise: strides [2, 1]"),
    "padded twice": (put("block_1_depthwise", "padding", "same"), "block_1_depthwise: padding 'same'"),
    # block 1 takes 49x64: TF pads ((1, 1), (0, 1))
    "pads of the other axis": (put("block_1_pad", "padding", [[0, 1], [1, 1]]),
                               "block_1_pad: padding [[0, 1], [1, 1]]"),
    # (0, 1) on both axes is Keras's correct_pad for a model of any size, not for this one
    "pads of an even side": (put("block_1_pad", "padding", [[0, 1], [0, 1]]), "block_1_pad: padding [[0, 1], [0, 1]]"),
    "dilation": (put("block_5_depthwise", "dilation_rate", [2, 2]), "block_5_depthwise: dilation_rate [2, 2]"),
    "activation": (put("Conv_1", "activation", "relu"), "Conv_1: activation 'relu'"),
    "leaky ReLU": (put("out_relu", "negative_slope", 0.1), "out_relu: negative_slope 0.1"),
    "ReLU threshold": (put("Conv1_relu", "threshold", 0.5), "Conv1_relu: threshold 0.5"),
}


@pytest.mark.parametrize("edit,words", REFUSED.values(), ids=REFUSED)
def test_a_config_the_engine_cannot_follow_is_refused(non_square, tmp_path, edit, words):
    folder = non_square[0]
    src = edited(folder / "m.keras", tmp_path / "m.keras", edit)
    with pytest.raises(WeightFileError, match="the engine cannot run this model") as err:
        convert(src, tmp_path / "out.h5")
    assert words in str(err.value)
    assert not (tmp_path / "out.h5").exists()
