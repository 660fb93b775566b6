"""The public API: predict on every image form, input checks, settings, determinism."""
import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine, EngineError, InputError
from mnv2engine.kernels.block import DEPTHWISE, EXPAND

from conftest import close
from torch_reference import reference_and_engine, run_with_blocks

SIZE = 64


@pytest.fixture(scope="module")
def engine():
    return Engine.random(alpha=0.35, size=SIZE, classes=10, seed=1)


@pytest.fixture(scope="module")
def pytorch(tmp_path_factory):
    """(PyTorch model, Engine on its weights): the reference of the concurrency tests, which
    would otherwise compare outputs only with each other (identical wrong ones would pass)."""
    return reference_and_engine(tmp_path_factory.mktemp("torch"), 0.35, SIZE, 10, seed=1)


def pytorch_logits(model, x):
    return run_with_blocks(model, x)["logits"]


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


def reference_preprocess(engine, array):
    """Independent of mnv2engine.preprocess: PIL bilinear resize of the whole image (crop=False),
    then x * scale + offset."""
    img = Image.fromarray(array).resize((SIZE, SIZE), Image.BILINEAR)
    return (np.asarray(img, np.float64) * engine.weights.scale + engine.weights.offset).astype(np.float32)


def test_predict_matches_forward_on_reference_preprocessing(engine, photo):
    logits = engine.forward(reference_preprocess(engine, photo)[None])[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = engine.predict(photo, top=3, crop=False)
    assert [i for i, _, _ in top] == list(np.argsort(-probs)[:3])
    assert np.allclose([p for _, _, p in top], np.sort(probs)[::-1][:3], rtol=1e-5)
    assert all(label == f"class {i}" for i, label, _ in top)


def test_predict_takes_path_pil_array_and_lists(engine, photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "p.png")
    by_array = engine.predict(photo)
    assert engine.predict(str(tmp_path / "p.png")) == by_array
    assert engine.predict(Image.fromarray(photo)) == by_array
    both = engine.predict([photo, tmp_path / "p.png"])
    assert both == [by_array, by_array]
    gray = engine.predict(Image.fromarray(photo).convert("L"))
    assert len(gray) == 5


@pytest.mark.parametrize("bad,message", [
    (np.zeros((SIZE, SIZE, 3), np.float32), r"shape \(N, H, W, 3\) with H, W >= 32"),
    (np.zeros((2, SIZE, SIZE, 4), np.float32), "shape"),
    (np.zeros((1, 31, SIZE, 3), np.float32), r">= 32, got shape \(1, 31, 64, 3\)"),
    (np.zeros((0, SIZE, SIZE, 3), np.float32), "shape"),
    (np.zeros((1, SIZE, SIZE, 3), np.float64), "float32"),
    (np.zeros((1, SIZE, SIZE, 3), np.int64), "float32"),
    (np.full((1, SIZE, SIZE, 3), np.nan, np.float32), "NaN"),
    ([[0.0]], "numpy array"),
])
def test_forward_rejects_bad_input(engine, bad, message):
    with pytest.raises(InputError, match=message):
        engine.forward(bad)


def test_forward_takes_any_float32_layout(engine):
    x = np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    ref = engine.forward(x)
    assert np.array_equal(engine.forward(x.astype(">f4")), ref)
    strided = np.asfortranarray(x)
    assert np.array_equal(engine.forward(strided), ref)


@pytest.mark.parametrize("t", [0, -1, 1.5, "2", True, 10_000])
def test_bad_t_is_refused(t):
    with pytest.raises(EngineError, match="t"):
        Engine.random(alpha=0.35, size=SIZE, classes=10, t=t)


def test_t_list_needs_one_entry_per_block():
    with pytest.raises(EngineError, match="one entry per block"):
        Engine.random(alpha=0.35, size=SIZE, classes=10, t=[2, 2])


@pytest.mark.parametrize("top", [0, 11, 2.0])
def test_bad_top_is_refused(engine, photo, top):
    with pytest.raises(EngineError, match="top"):
        engine.predict(photo, top=top)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ("/nonexistent/cat.jpg", "no such image"),
    (42, "path, a PIL image"),
])
def test_predict_rejects_bad_images(engine, bad, message):
    with pytest.raises(InputError, match=message):
        engine.predict(bad)


def test_not_an_image_file(engine, tmp_path):
    (tmp_path / "fake.jpg").write_text("not a jpeg")
    with pytest.raises(InputError, match="not an image"):
        engine.predict(tmp_path / "fake.jpg")
    with pytest.raises(InputError, match="directory"):
        engine.predict(tmp_path)


def test_random_engine_is_seeded_and_deterministic():
    x = np.random.default_rng(3).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    a = Engine.random(alpha=0.35, size=SIZE, classes=10, seed=5)
    b = Engine.random(alpha=0.35, size=SIZE, classes=10, seed=5)
    c = Engine.random(alpha=0.35, size=SIZE, classes=10, seed=6)
    assert np.array_equal(a.forward(x), b.forward(x))
    assert np.array_equal(a.forward(x), a.forward(x))
    assert not np.allclose(a.forward(x), c.forward(x))


def test_headless_engine_returns_pooled_features():
    e = Engine.random(alpha=0.35, size=SIZE, classes=0)
    feats = e.forward(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert feats.shape == (2, e.arch.last_channels) == (2, 1280)
    with pytest.raises(EngineError, match="headless"):
        e.predict(np.zeros((8, 8, 3), np.uint8))


def test_concurrent_calls_from_threads_match_sequential_ones_and_pytorch(pytorch):
    from concurrent.futures import ThreadPoolExecutor
    model, engine = pytorch
    xs = [np.random.default_rng(i).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32) for i in range(8)]
    sequential = [engine.forward(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(engine.forward, xs))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, parallel))
    for got, x in zip(parallel, xs):
        close(got, pytorch_logits(model, x))


def test_threads_split_a_batch_without_changing_results(pytorch):
    model, one = pytorch
    x = np.random.default_rng(4).uniform(-1, 1, (5, SIZE, SIZE, 3)).astype(np.float32)
    two = Engine(one.weights, threads=2)
    got = two.forward(x)
    assert np.array_equal(got, one.forward(x))
    close(got, pytorch_logits(model, x))
    with pytest.raises(EngineError, match="threads"):
        Engine.random(alpha=0.35, size=SIZE, classes=10, threads=0)


ODD = 67  # an odd size: the threads' shares of rows and pixels are uneven


@pytest.fixture(scope="module")
def pytorch_odd(tmp_path_factory):
    """PyTorch models at an odd size with 70 classes (two panels of the classifier, one per
    thread) and headless, each with an Engine on its weights."""
    return {classes: reference_and_engine(tmp_path_factory.mktemp(f"odd{classes}"), 0.5, ODD, classes, seed=2)
            for classes in (70, 0)}


@pytest.mark.parametrize("kw", [dict(), dict(t=3), dict(t=4), dict(rows=True), dict(rows=True, t=2)], ids=str)
def test_threads_match_one_thread_and_pytorch_in_every_mode(pytorch_odd, kw):
    """2 and 3 threads, on fewer images than threads (1, and 2 on 3 threads: the threads
    share each image, each computing a share of every layer) and on more (5: each thread
    takes whole images). Every output sums in the same order as on one thread, so the
    results are one thread's, bit for bit, and PyTorch's; 3 threads on the 2-row last
    blocks leave one idle."""
    model, loaded = pytorch_odd[70]
    x = np.random.default_rng(5).uniform(-1, 1, (5, ODD, ODD, 3)).astype(np.float32)
    want = pytorch_logits(model, x)
    one = Engine(loaded.weights, **kw)
    for threads in (2, 3):
        shared = Engine(loaded.weights, threads=threads, **kw)
        for batch in (1, 2, 5):
            got = shared.forward(x[:batch])
            assert np.array_equal(got, one.forward(x[:batch])), f"{threads} threads, batch {batch}"
            close(got, want[:batch])
    model, loaded = pytorch_odd[0]
    headless = Engine(loaded.weights, threads=2, **kw)
    got = headless.forward(x[:1])
    assert np.array_equal(got, Engine(loaded.weights, **kw).forward(x[:1]))
    close(got, run_with_blocks(model, x[:1])["pooled"])


@pytest.mark.parametrize("cut", ["learned", "after the first row", "before the last row"])
def test_two_threads_cut_the_rows_anywhere_without_changing_results(pytorch, cut):
    """Two threads sharing an image cut the rows of the stem and of every depthwise where
    they last finished together (kernels/sync.py), a cut kept beside the plan's records. Any
    cut must give PyTorch's logits, and one thread's bit for bit: every row computed
    once, by one thread, in the same way."""
    model, one = pytorch
    two = Engine(one.weights, threads=2)
    x = np.random.default_rng(8).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    two.forward(x)
    cuts = two._planned(1, (SIZE, SIZE), 2)[1].cuts
    assert cuts[0, EXPAND] > 0 and (cuts[:, DEPTHWISE] > 0).all(), "the first pass stores its cuts"
    rows = np.array([step.block.out_size[0] for step in two.plan(1, 2).steps])  # block 0's: the stem's
    if cut == "after the first row":
        cuts[0, EXPAND], cuts[:, DEPTHWISE] = 1, 1
    elif cut == "before the last row":
        cuts[0, EXPAND], cuts[:, DEPTHWISE] = rows[0] - 1, rows - 1
    got = two.forward(x)
    assert np.array_equal(got, one.forward(x))
    close(got, pytorch_logits(model, x))


@pytest.mark.slow
def test_more_threads_than_cores_still_finish(pytorch):
    """The barrier spins, then yields its core: 8 threads on this machine's few cores."""
    model, one = pytorch
    x = np.random.default_rng(6).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    many = Engine(one.weights, threads=8, rows=True)
    got = many.forward(x)
    assert np.array_equal(got, one.forward(x))
    close(got, pytorch_logits(model, x))


def test_concurrent_first_calls_wait_for_one_plan(monkeypatch, pytorch):
    """The first calls of a batch size make its plan and program; concurrent ones must not
    see them half made (making the program is slowed here to widen the window)."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    import mnv2engine.engine as engine_module
    real = engine_module.compile_plan

    def slow_compile_plan(*args):
        time.sleep(0.05)
        return real(*args)
    monkeypatch.setattr(engine_module, "compile_plan", slow_compile_plan)
    model, loaded = pytorch
    e = Engine(loaded.weights)
    x = np.random.default_rng(0).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: e.forward(x), range(4)))
    want = pytorch_logits(model, x)
    for g in got:
        close(g, want)


def test_concurrent_calls_on_shared_image_threads_match(pytorch):
    """Calls from 4 threads into an engine whose 3 threads share each image."""
    from concurrent.futures import ThreadPoolExecutor
    model, one = pytorch
    shared = Engine(one.weights, threads=3)
    xs = [np.random.default_rng(i).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(shared.forward, xs))
    assert all(np.array_equal(g, one.forward(x)) for g, x in zip(got, xs))
    close(np.concatenate(got), pytorch_logits(model, np.concatenate(xs)))
