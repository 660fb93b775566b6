"""The row pipeline across blocks (kernels/pipeline.py) against the materialized network,
and the caller's input read in place.

The reference is the engine's materialized mode (t = 1, every tensor whole), itself
checked against PyTorch and Keras elsewhere (test_torch_reference, test_keras), and, with
PyTorch's padding, PyTorch itself; every output of a piped block is copied out row by row
as the pipeline makes it (Engine.intermediates), since none of them exists whole otherwise."""

import numpy as np
import pytest

from mnv2engine import Engine

from conftest import close, forward_peak, traced
from torch_reference import reference_and_engine, run_with_blocks

KIB = 1024


def assert_blocks_equal(engine, reference, x):
    """Every block's output, the pooled features and the logits; returns the engine's."""
    got, want = engine.intermediates(x), reference.intermediates(x)
    assert got.keys() == want.keys()
    for name in want:
        try:
            close(got[name], want[name], 1e-5)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    return got


@pytest.fixture(scope="module")
def pytorch_99(tmp_path_factory):
    """PyTorch's MobileNetV2 0.75 at 99 (symmetric padding), and an Engine on its weights."""
    return reference_and_engine(tmp_path_factory.mktemp("pipeline"), 0.75, 99, 10, seed=6)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.35, 1.0, 1.4])
@pytest.mark.parametrize("size", [96, 224, 113])  # 113: odd sizes, both edges padded at stride 2
@pytest.mark.parametrize("batch", [1, 3])
def test_every_block_equals_the_materialized_one(alpha, size, batch):
    reference = Engine.random(alpha=alpha, size=size, classes=10, seed=5)
    engine = Engine(reference.weights, rows=True)
    assert engine.plan(batch).piped >= 2  # the stem, block 0 and more run as the pipeline
    x = np.random.default_rng(size + batch).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    assert_blocks_equal(engine, reference, x)
    close(engine.forward(x), reference.forward(x), 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(t=3), dict(t=[5] * 4 + [1] * 13), dict(threads=2), dict(threads=2, t=2),
                                dict(threads=2, t=5), dict(threads=3)],
                         ids=str)
@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_the_pipeline_composes_with_slices_threads_and_both_paddings(kw, padding, pytorch_99):
    """threads=2, 3: each thread makes a band of rows through its own rings (forward; the
    block-by-block intermediates run on one thread). Width 0.75: block 0's 24 channels
    are no multiple of 16, so rows=True slices them the paper's way (8/8/8 at t=3,
    4-5 at t=5), through the stem and depthwise paths for narrow slices. With PyTorch's
    padding, every block and the logits against PyTorch's as well."""
    if padding == "symmetric":
        model, reference = pytorch_99
    else:
        model, reference = None, Engine.random(alpha=0.75, size=99, classes=10, seed=6, padding=padding)
    engine = Engine(reference.weights, rows=True, **kw)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 99, 99, 3)).astype(np.float32)
    assert engine.plan(1, engine.threads).piped >= 2
    blocks = assert_blocks_equal(engine, reference, x)
    got = engine.forward(x)
    close(got, reference.forward(x), 1e-5)
    if model is not None:
        want = run_with_blocks(model, x)
        for name in [b.name for b in engine.arch.blocks] + ["logits"]:
            try:
                close(blocks[name], want[name])
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
        close(got, want["logits"])


@pytest.mark.parametrize("kw", [dict(rows=True), dict(rows=True, t=4), dict(rows=True, threads=2)], ids=str)
def test_the_planners_peak_is_what_a_forward_allocates(kw):
    """1.0/224, batch 1: the arena and the logits, to a few KiB (the counters and the
    barrier's state, NumPy's headers; with a helper thread, its futures and the pool's
    bookkeeping too: 7.4-8.2 KiB measured)."""
    engine = Engine.random(alpha=1.0, size=224, **kw)
    x = np.zeros((1, 224, 224, 3), np.float32)
    report = engine.memory_report()
    assert report.plan.piped == 4 and not report.input_copied
    measured = forward_peak(engine, x)
    margin = 12 * KIB if engine.threads > 1 else 4 * KIB
    assert abs(measured - report.peak_bytes) <= margin, (measured, report.peak_bytes)
    if engine.threads > 1:  # the threads share the image: the next call takes the last one's arena
        assert traced(lambda: engine.forward(x))[1] <= 12 * KIB


def test_rows_is_the_lowest_memory_setting():
    peaks = {str(kw): Engine.random(alpha=1.0, size=224, **kw).memory_report().peak_bytes
             for kw in (dict(t=1), dict(t=4), dict(t=16), dict(rows=True))}
    assert min(peaks, key=peaks.get) == str(dict(rows=True)), peaks
    assert peaks[str(dict(rows=True))] <= 0.5 * 2**20  # the target: half a MiB beyond the caller's input


def test_rows_runs_a_batch_an_image_at_a_time(tmp_path):
    """rows=True, the lowest-memory setting, holds one image's activations whatever the
    batch: a plan for the batch would hold the pipeline's last output for every image.
    The logits of the batch against PyTorch's."""
    model, engine = reference_and_engine(tmp_path, 0.35, 64, 10, seed=3, rows=True, t=4)
    x = np.random.default_rng(6).uniform(-1, 1, (5, 64, 64, 3)).astype(np.float32)
    one, report = engine.memory_report(1), engine.memory_report(len(x))
    assert report.schedule.sub_batch == 1 and report.arena_bytes == one.arena_bytes
    assert engine.plan(len(x)).arena_bytes > one.arena_bytes  # what a whole-batch pass would hold
    assert abs(forward_peak(engine, x) - (one.arena_bytes + 5 * 10 * 4)) <= 4 * KIB  # + the logits
    close(engine.forward(x), run_with_blocks(model, x)["logits"])


@pytest.mark.parametrize("make", [
    lambda x: x[:, ::2, ::2],                       # strided
    lambda x: x.astype(x.dtype.newbyteorder()),     # the other byte order
    lambda x: np.asfortranarray(x),                 # column-major
], ids=["strided", "byteswapped", "fortran"])
def test_an_input_forward_cannot_read_in_place_is_copied_with_the_same_result(make):
    engine = Engine.random(alpha=0.35, size=64, classes=10, seed=2, rows=True)
    big = np.random.default_rng(4).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    plain = np.ascontiguousarray(big[:, ::2, ::2])  # the 64x64 batch every case holds
    odd = make(big if make(big).shape[1] == 64 else plain)
    assert odd.shape == plain.shape and not Engine.reads_in_place(odd)
    np.testing.assert_array_equal(odd, plain)
    want = engine.forward(plain)
    np.testing.assert_array_equal(engine.forward(odd), want)
    report = engine.memory_report(x=odd)
    assert report.input_copied and report.input_copy_bytes == plain[0].nbytes  # rows=True: an image at a time
    assert "copied" in str(report)
    assert abs(forward_peak(engine, odd) - report.peak_bytes) <= 4 * KIB


def test_an_input_read_in_place_is_neither_copied_nor_changed():
    engine = Engine.random(alpha=0.35, size=64, classes=10, rows=True)
    x = np.random.default_rng(5).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    before = x.copy()
    assert Engine.reads_in_place(x) and not engine.memory_report(x=x).input_copied
    engine.forward(x)
    peak = forward_peak(engine, x)
    np.testing.assert_array_equal(x, before)
    assert abs(peak - engine.memory_report().peak_bytes) <= 4 * KIB
    assert peak < engine.memory_report().arena_bytes + x.nbytes  # no copy of x was made
