"""Any input size at run time, from one engine: against PyTorch (torchvision's
MobileNetV2 runs any size from the same weights), with every plan kept bounded."""
import numpy as np
import pytest

from mnv2engine import Engine, EngineError
from mnv2engine.engine import PLANS_KEPT, SIZES_KEPT

from conftest import close
from torch_reference import reference_and_engine, run_with_blocks

SIZES = [(96, 96), (160, 160), (224, 224), (97, 131), (33, 40)]


@pytest.fixture(scope="module")
def model_and_engine(tmp_path_factory):
    return reference_and_engine(tmp_path_factory.mktemp("sizes"), 0.35, 128, 10, seed=4)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_one_engine_runs_any_size(model_and_engine, size):
    model, engine = model_and_engine
    x = np.random.default_rng(size[1]).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
    ref = run_with_blocks(model, x)["logits"]
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()  # inputs that matter
    close(engine.forward(x), ref)


def test_every_mode_and_thread_count_at_another_size(tmp_path):
    model, _ = reference_and_engine(tmp_path, 0.35, 96, 10, seed=5)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 75, 58, 3)).astype(np.float32)
    ref = run_with_blocks(model, x)["logits"]
    for kw in (dict(t=3), dict(rows=True), dict(rows=True, t=2, threads=2), dict(threads=2)):
        engine = Engine.load(tmp_path / "mnv2.h5", **kw)
        close(engine.forward(x), ref)
        close(engine.forward(x[:1]), ref[:1])  # one image shared by the threads


def test_an_image_shared_by_threads_at_one_size_then_another(tmp_path):
    """A call whose threads share an image takes the arena the last such call left
    (Engine._arena): a smaller input runs in the start of it, a larger one allocates
    another. Each call against PyTorch."""
    model, engine = reference_and_engine(tmp_path, 0.35, 96, 10, seed=7, threads=2)
    rng = np.random.default_rng(8)
    for size in [(96, 96), (64, 72), (96, 96), (128, 112), (64, 72), (128, 112)]:
        x = rng.uniform(-1, 1, (1, *size, 3)).astype(np.float32)
        close(engine.forward(x), run_with_blocks(model, x)["logits"])


def test_plans_are_kept_bounded_and_remade(model_and_engine):
    _, engine = model_and_engine
    x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    first = engine.forward(x)
    for s in range(40, 40 + 2 * PLANS_KEPT):
        engine.forward(np.zeros((1, s, s, 3), np.float32))
    assert len(engine._plans) == PLANS_KEPT and len(engine._sizes) == SIZES_KEPT
    np.testing.assert_array_equal(engine.forward(x), first)  # evicted, made again, same result


def test_the_recorded_size_is_the_default_and_size_overrides(model_and_engine):
    _, engine = model_and_engine
    assert engine.preprocess(np.zeros((50, 70, 3), np.uint8)).shape == (128, 128, 3)
    assert engine.preprocess(np.zeros((50, 70, 3), np.uint8), size=(80, 96)).shape == (80, 96, 3)
    image = np.random.default_rng(2).integers(0, 256, (90, 120, 3), np.uint8)
    got = engine.predict(image, top=3, size=96)
    ref = engine.classify(engine.preprocess(image, 96)[None], top=3)[0]
    assert got == ref
    assert engine.memory_report(size=224).plan.input.shape == (1, 224, 224, 3)
    assert engine.memory_report(size=224).arena_bytes > engine.memory_report().arena_bytes
    with pytest.raises(EngineError, match="input size must be .* >= 32, got 16"):
        engine.memory_report(size=16)


def test_a_budget_that_fits_the_recorded_size_but_not_a_larger_one(tmp_path):
    _, engine = reference_and_engine(tmp_path, 0.35, 64, 10, seed=6)
    small = Engine.load(tmp_path / "mnv2.h5", max_memory=engine.memory_report(1).arena_bytes)
    with pytest.raises(EngineError, match="max_memory=.* is less than one image needs"):
        small.forward(np.zeros((1, 200, 200, 3), np.float32))
