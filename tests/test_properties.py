"""Property-based tests: the kernels' shape and padding arithmetic on arbitrary shapes, and
the weight-file loader on mutated files (a clear WeightFileError, or the very weights that
were written, never anything else)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnv2engine import EngineError
from mnv2engine.arch import conv_out_size, conv_padding
from mnv2engine.kernels import conv3x3, depthwise3x3
from mnv2engine.weights import read_mnv2, write_mnv2
from mnv2engine.weights.random import random_weightset

import naive
from conftest import close


@given(size=st.integers(1, 300), stride=st.sampled_from([1, 2]), conv=st.sampled_from(["same", "symmetric"]))
def test_padding_gives_ceil_output_and_covers_every_input(size, stride, conv):
    before, after = conv_padding(size, stride, conv)
    out = (size + before + after - 3) // stride + 1
    assert out == conv_out_size(size, stride) == -(-size // stride)
    # every window overlaps the input: none lies wholly in the padding
    first_start, last_start = -before, (out - 1) * stride - before
    assert first_start + 2 >= 0 and last_start < size
    assert last_start + 2 <= size - 1 + after  # and none runs past the padding
    if conv == "same":  # TensorFlow: total padding is the minimum, the extra pixel after
        assert before + after == max((out - 1) * stride + 3 - size, 0) and after - before in (0, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 40), c=st.integers(1, 11),
       stride=st.sampled_from([1, 2]), conv=st.sampled_from(["same", "symmetric"]), seed=st.integers(0, 99),
       cout=st.integers(1, 20))
def test_depthwise_and_stem_match_naive_on_any_shape(n, h, w, c, stride, conv, seed, cout):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    pads = conv_padding(h, stride, conv) + conv_padding(w, stride, conv)
    wd, b = rng.standard_normal((3, 3, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    ref = naive.depthwise3x3(x, wd, b, stride, pads, 0.0, 6.0)
    out = np.empty(ref.shape, np.float32)
    depthwise3x3(x, wd, b, stride, pads, 0.0, 6.0, out)
    close(out, ref, 1e-5)
    ws = rng.standard_normal((3, 3, c, cout)).astype(np.float32)  # wide rows and any cout: every stem tile
    bs = rng.standard_normal(cout).astype(np.float32)
    ref = naive.conv3x3(x, ws, bs, stride, pads, -np.inf, np.inf)
    out = np.empty(ref.shape, np.float32)
    conv3x3(x, ws, bs, stride, pads, -np.inf, np.inf, out)
    close(out, ref, 1e-5)


@pytest.fixture(scope="module")
def small_weights():
    return random_weightset(alpha=0.35, size=32, classes=3, seed=0)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, small_weights):
    path = tmp_path_factory.mktemp("w") / "m.h5"
    write_mnv2(small_weights, path)
    return path


def assert_identical(got, want):
    """Every field and every tensor bit for bit (compared here, not with the file's digest)."""
    for field in ("alpha", "classes", "padding", "labels", "source", "crop", "crop_fraction"):
        assert getattr(got, field) == getattr(want, field), field
    assert tuple(got.size) == tuple(want.size)
    for field in ("scale", "offset"):
        assert np.asarray(getattr(got, field), np.float32).tobytes() == \
            np.asarray(getattr(want, field), np.float32).tobytes(), field
    assert got.layers.keys() == want.layers.keys()
    for name, layer in want.layers.items():
        tensors = got.layers[name].tensors()
        assert tensors.keys() == layer.tensors().keys(), name
        for t, arr in layer.tensors().items():
            assert tensors[t].dtype == arr.dtype and tensors[t].tobytes() == arr.tobytes(), f"{name}/{t}"
        if layer.bn is not None:
            assert got.layers[name].bn.epsilon == layer.bn.epsilon, f"{name}/batchnorm epsilon"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_load_identically_or_fail_cleanly(small_file, small_weights, tmp_path, data):
    blob = bytearray(small_file.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "zero-range"]))
    if kind == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:
        start = data.draw(st.integers(0, len(blob) - 1))
        length = data.draw(st.integers(1, 64))
        for i in range(start, min(start + length, len(blob))):
            blob[i] = 0 if kind == "zero-range" else blob[i] ^ data.draw(st.integers(1, 255))
    path = tmp_path / "mutated.h5"
    path.write_bytes(bytes(blob))
    try:
        ws = read_mnv2(path)
    except EngineError:
        return
    # Loaded: then the damage missed everything the engine uses (free space, HDF5 bookkeeping).
    assert_identical(ws, small_weights)
