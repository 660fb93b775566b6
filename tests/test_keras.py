"""The Keras converters against `keras.applications.MobileNetV2` holding the same weights.

A randomised Keras model is saved in every layout the converter reads (legacy full model,
Keras 3 `.weights.h5` with and without recorded layer names, the official applications
weight files with and without ":0"), converted with `mnv2engine.convert`, and the engine's
output must match Keras's own `predict`. Keras models are slow to build on the torch
backend, so each is built once per module.
"""
import os
import shutil

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert

from conftest import close, load_benchmark, probabilities, slicing_modes, require, softmax

keras = require("keras")  # the reference (on torch): without it these tests skip

# Keras's torch backend warns about NumPy 2's copy keyword on every array it converts.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# (alpha, input size, classes): the three widths, even and odd sizes, with and without the top
MODELS = [(0.35, 96, 1000), (1.0, 97, 0), (1.4, 128, 10)]


def randomized(model, seed):
    """Weights whose every tensor matters: He-scaled kernels, BatchNorm far from identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            c = weights[0].shape
            new = [rng.uniform(0.5, 1.5, c), rng.normal(0.1, 0.2, c), rng.normal(0, 0.2, c),
                   rng.uniform(0.5, 2.0, c)]
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = weights
            new = [rng.normal(size=kernel.shape) / np.sqrt(kernel.shape[0]), rng.normal(0, 0.1, bias.shape)]
        else:  # Conv2D [kh, kw, cin, cout] or DepthwiseConv2D [kh, kw, c, 1], whose fan-in is kh * kw
            kernel, = weights
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            fan_in = kernel.shape[0] * kernel.shape[1] * (1 if depthwise else kernel.shape[2])
            new = [rng.normal(0, np.sqrt(2 / fan_in), kernel.shape)]
        layer.set_weights([w.astype(np.float32) for w in new])
    return model


def mobilenet_v2(alpha, size, classes):
    if classes:
        return keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3),
                                              classes=classes, classifier_activation=None)
    return keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3),
                                          include_top=False, pooling="avg")


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: "alpha{}-{}-classes{}".format(*p))
def keras_model(request, tmp_path_factory):
    """(alpha, size, classes, model, input batch, Keras's output for it)."""
    alpha, size, classes = request.param
    model = randomized(mobilenet_v2(alpha, size, classes), seed=size)
    x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    # The comparison proves nothing if the reference maps every input to the same output.
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
    return alpha, size, classes, model, x, ref


# -- the layouts --------------------------------------------------------------------------
def save_official(model, path, suffix=":0"):
    """The layout of Keras's published files (mobilenet_v2_weights_tf_dim_ordering_tf_kernels_
    <alpha>_<size>[_no_top].h5), written by Keras 2's `save_weights`: byte-string attributes,
    every layer listed, TensorFlow variable names ("block_1_depthwise/depthwise_kernel:0")."""
    def tf_name(layer, var):
        name = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else var.name
        return f"{layer.name}/{name}{suffix}".encode()

    with h5py.File(path, "w") as f:
        f.attrs.update(layer_names=np.array([layer.name.encode() for layer in model.layers]),
                       backend=b"tensorflow", keras_version=b"2.2.4")
        for layer in model.layers:
            g = f.create_group(layer.name)
            names = [tf_name(layer, var) for var in layer.weights]
            g.attrs["weight_names"] = np.array(names, dtype="S")
            for name, value in zip(names, layer.get_weights()):
                g.create_dataset(name.decode(), data=value)


def save_unnamed_weights_h5(model, path):
    """A `.weights.h5` as Keras versions that do not record layer names write it."""
    model.save_weights(path)
    with h5py.File(path, "r+") as f:
        for g in f["layers"].values():
            if "vars" in g:
                del g["vars"].attrs["name"]


SAVERS = {
    "model.keras": lambda model, path: model.save(path),
    "full-model.h5": lambda model, path: model.save(path),
    "model.weights.h5": lambda model, path: model.save_weights(path),
    "unnamed.weights.h5": save_unnamed_weights_h5,
    "official.h5": save_official,
    "official-no-suffix.h5": lambda model, path: save_official(model, path, suffix=""),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", SAVERS)
def test_engine_matches_keras(keras_model, tmp_path, layout):
    alpha, size, classes, model, x, ref = keras_model
    src = tmp_path / layout
    SAVERS[layout](model, src)
    ws = convert(src, tmp_path / "mnv2.h5", size=size)
    assert ws.source == f"keras {src}" and ws.labels is None
    assert (ws.crop, ws.crop_fraction) == ("central", 0.875)  # Keras's ImageNet evaluation
    np.testing.assert_allclose(ws.scale, 1 / 127.5, rtol=1e-6)  # x / 127.5 - 1
    np.testing.assert_allclose(ws.offset, -1.0, rtol=1e-6)
    engine = Engine.load(tmp_path / "mnv2.h5")
    assert (engine.arch.alpha, engine.arch.size, engine.arch.classes, engine.arch.padding) == \
        (alpha, (size, size), classes, "same")
    close(engine.forward(x), ref)


@pytest.mark.slow
def test_every_mode_matches_keras_in_forward(keras_model, tmp_path):
    """Sliced and row-streamed forward() calls with TensorFlow's 'same' padding (its
    stride-2 pad of 0 before and 1 after meets every slice and row boundary)."""
    alpha, size, classes, model, x, ref = keras_model
    model.save_weights(tmp_path / "model.weights.h5")
    ws = convert(tmp_path / "model.weights.h5", tmp_path / "mnv2.h5", size=size)
    for label, kw in slicing_modes(ws.architecture).items():
        try:
            close(Engine(ws, **kw).forward(x), ref)
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from None


def test_benchmarks_numpy_reference_matches_keras(keras_model, tmp_path):
    """benchmarks/_check.py's network, the benchmarks' reference, with 'same' padding."""
    check = load_benchmark("_check")
    alpha, size, classes, model, x, ref = keras_model
    model.save_weights(tmp_path / "model.weights.h5")
    close(check.network(convert(tmp_path / "model.weights.h5", tmp_path / "mnv2.h5", size=size), x), ref, 1e-5)


@pytest.mark.slow
def test_predict_on_photos_matches_keras_with_its_own_preprocessing(keras_model, tmp_path, photo_paths):
    """Photos as a Keras user feeds them: `keras.utils.load_img` (bilinear resize of the
    whole image to the input size: crop=False) and `mobilenet_v2.preprocess_input`; the
    engine gets the file names."""
    alpha, size, classes, model, _, _ = keras_model
    pixels = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size), interpolation="bilinear"))
              for p in photo_paths]
    ref = model.predict(keras.applications.mobilenet_v2.preprocess_input(np.stack(pixels)), verbose=0)
    model.save_weights(tmp_path / "model.weights.h5")
    convert(tmp_path / "model.weights.h5", tmp_path / "mnv2.h5", size=size)
    engine = Engine.load(tmp_path / "mnv2.h5")
    if classes:
        close(probabilities(engine.predict(photo_paths, top=classes, crop=False), classes), softmax(ref))
    else:  # headless: predict refuses; its preprocessing, then the features
        close(engine.forward(np.stack([engine.preprocess(p, crop=False) for p in photo_paths])), ref)


# -- refusals -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A small MobileNetV2 in the official layout, to damage copies of."""
    path = tmp_path_factory.mktemp("official") / "mobilenet_v2.h5"
    save_official(mobilenet_v2(0.35, 96, 10), path)
    return path


def damaged(official_file, tmp_path, damage):
    path = tmp_path / "damaged.h5"
    shutil.copy(official_file, path)
    with h5py.File(path, "r+") as f:
        damage(f)
    return path


def refused(src, tmp_path, *words):
    """convert must raise a WeightFileError naming every word, and write nothing."""
    with pytest.raises(WeightFileError) as err:
        convert(src, tmp_path / "out.h5", size=96)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "out.h5").exists()
    return str(err.value)


def replace(f, name, value):
    del f[name]
    f[name] = value


def remove_layer(f, layer):
    del f[layer]
    f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != layer.encode()])


@pytest.mark.parametrize("damage,words", [
    (lambda f: replace(f, "block_5_project/block_5_project/kernel:0", np.zeros((1, 1, 96, 24), np.float32)),
     ["block_5_project", "(1, 1, 96, 24)", "(1, 1, 96, 16)"]),
    (lambda f: replace(f, "block_3_depthwise_BN/block_3_depthwise_BN/gamma:0", np.ones(47, np.float32)),
     ["block_3_depthwise_BN", "(47,)", "(48,)"]),
    (lambda f: remove_layer(f, "block_5_project_BN"), ["block_5_project_BN", "missing"]),
    (lambda f: replace(f, "block_7_expand/block_7_expand/kernel:0", np.zeros((1, 1, 16, 96), np.int32)),
     ["block_7_expand", "int32"]),
])
def test_damaged_file_is_refused(official_file, tmp_path, damage, words):
    refused(damaged(official_file, tmp_path, damage), tmp_path, *words)


def test_missing_and_extra_tensors_are_refused(official_file, tmp_path):
    def drop_variance(f):
        g = f["Conv_1_bn"]
        g.attrs["weight_names"] = g.attrs["weight_names"][:3]
    refused(damaged(official_file, tmp_path, drop_variance), tmp_path, "Conv_1_bn", "moving_variance")

    def add_bias(f):
        g = f["block_2_expand"]
        g.attrs["weight_names"] = np.append(g.attrs["weight_names"], b"block_2_expand/bias:0")
        g["block_2_expand/bias:0"] = np.zeros(144, np.float32)
    refused(damaged(official_file, tmp_path, add_bias), tmp_path, "block_2_expand/bias", "not part of")


def other_application():
    return keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(96, 96, 3),
                                        include_top=False, pooling="avg")


def tiny_sequential():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="predictions")])


@pytest.mark.parametrize("build", [other_application, tiny_sequential])
@pytest.mark.parametrize("layout", ["model.keras", "full-model.h5", "model.weights.h5", "unnamed.weights.h5"])
def test_other_keras_models_are_refused(tmp_path, build, layout):
    src = tmp_path / layout
    SAVERS[layout](build(), src)
    refused(src, tmp_path, "not a Keras MobileNetV2")


def test_foreign_hdf5_is_refused(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.zeros(3)
    refused(tmp_path / "data.h5", tmp_path, "not a Keras weight file")


# -- mnv2 fetch-weights, against a local HTTP server ------------------------------------------
@pytest.fixture
def served(official_file):
    """Serve the official-layout file on 127.0.0.1; yields its URL and sha256."""
    import functools
    import hashlib
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(official_file.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}/{official_file.name}",
               hashlib.sha256(official_file.read_bytes()).hexdigest())
    finally:
        server.shutdown()


def test_fetch_weights_downloads_checks_and_converts(served, tmp_path, capsys):
    from mnv2engine.cli import main
    url, digest = served
    dest = tmp_path / "cache" / "mnv2.h5"
    assert main(["fetch-weights", "--url", url, "--sha256", digest, "--dest", str(dest)]) == 0
    assert Engine.load(dest).arch.alpha == 0.35
    assert main(["fetch-weights", "--url", url, "--sha256", digest, "--dest", str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_fetch_weights_refuses_a_wrong_checksum(served, tmp_path, capsys):
    from mnv2engine.cli import main
    url, _ = served
    dest = tmp_path / "mnv2.h5"
    assert main(["fetch-weights", "--url", url, "--sha256", "0" * 64, "--dest", str(dest)]) == 2
    assert "does not match" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_fetch_weights_without_network_says_how_to_convert_instead(tmp_path, capsys):
    import socket

    from mnv2engine.cli import main
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["fetch-weights", "--url", f"http://127.0.0.1:{port}/x.h5", "--sha256", "0" * 64,
                 "--dest", str(tmp_path / "m.h5")]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "mnv2 convert" in err
    assert main(["fetch-weights", "--dest", str(tmp_path / "m.h5")]) == 2  # no pinned digest yet
    assert "--sha256" in capsys.readouterr().err
