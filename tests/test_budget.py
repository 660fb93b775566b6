"""Any batch in bounded memory: a forward call's activations stay within max_memory
(256 MiB by default), a larger batch running in sub-batches with the same results."""

import numpy as np
import pytest

from mnv2engine import Engine, EngineError, convert
from mnv2engine.budget import MAX_MEMORY

from conftest import close, require, traced

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2, randomized, run_with_blocks

SIZE = 96


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A PyTorch model at alpha 0.35 / 96 as mnv2.h5, its logits on x, and x."""
    model = randomized(MobileNetV2(num_classes=1000, width_mult=0.35), seed=35)
    folder = tmp_path_factory.mktemp("budget")
    torch.save(model.state_dict(), folder / "mnv2.pth")
    convert(folder / "mnv2.pth", folder / "mnv2.h5", size=SIZE)
    x = np.random.default_rng(35).uniform(-1, 1, (7, SIZE, SIZE, 3)).astype(np.float32)
    return folder / "mnv2.h5", run_with_blocks(model, x)["logits"], x


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_a_2000_image_batch_stays_within_the_default_budget(model_file, threads):
    """2000 images at alpha 0.35 / 96 (1.06 GB of activations in one arena) within the default budget."""
    path, want, x = model_file
    engine = Engine.load(path, threads=threads)
    batch = np.broadcast_to(x[:1], (2000, SIZE, SIZE, 3))  # 2000 images, one image's memory
    report = engine.memory_report(x=batch)  # not contiguous: copied, a sub-batch at a time
    assert report.input_copied
    assert report.schedule.sub_batch < 1000 and report.peak_bytes <= MAX_MEMORY + 2000 * 1000 * 4
    engine.forward(x[:3])  # load the kernels outside the measurement
    out, peak = traced(lambda: engine.forward(batch))
    assert peak <= MAX_MEMORY + out.nbytes, f"tracemalloc peak {peak:,} > budget + output"
    assert peak <= report.peak_bytes + 64 * 1024, f"tracemalloc peak {peak:,} vs planner {report.peak_bytes:,}"
    assert (out == out[0]).all(), "the same image gave different logits in different sub-batches"
    close(out[0], want[0])


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(threads=2), dict(rows=True, t=3), dict(threads=3, rows=True)], ids=str)
def test_sub_batches_give_the_same_results(model_file, kw):
    path, want, x = model_file
    one = Engine.load(path, **kw).memory_report(1)
    budget = 2 * one.arena_bytes + one.arena_bytes // 2  # two or three images at once, depending on threads
    engine = Engine.load(path, max_memory=budget, **kw)
    report = engine.memory_report(len(x))
    assert report.schedule.arenas * report.arena_bytes <= budget
    assert report.schedule.sub_batch < len(x) / report.schedule.arenas
    assert f"sub-batches of {report.schedule.sub_batch}" in str(report)
    engine.forward(x[:1])  # compile this engine's evaluations outside the measurement
    out, peak = traced(lambda: engine.forward(x))
    assert peak <= budget + out.nbytes + 64 * 1024, f"tracemalloc peak {peak:,} > budget {budget:,} + output"
    close(out, want)
    close(engine.forward(x[:2]), want[:2])  # fewer images than threads: shared, in turn


def test_a_budget_below_one_image_names_both_numbers(model_file):
    path, _, _ = model_file
    for kw in (dict(), dict(threads=2, rows=True)):
        need = Engine.load(path, **kw).memory_report(1).arena_bytes
        with pytest.raises(EngineError, match=f"max_memory={need - 1:,} bytes .* {need:,} bytes"):
            Engine.load(path, max_memory=need - 1, **kw)
        Engine.load(path, max_memory=need, **kw).forward(np.zeros((3, SIZE, SIZE, 3), np.float32))


@pytest.mark.parametrize("bad", [0, -1, 2.5e8, "256M", True, None])
def test_bad_max_memory_is_refused(bad):
    with pytest.raises(EngineError, match="max_memory"):
        Engine.random(alpha=0.35, size=32, classes=3, max_memory=bad)


def _arena(path, images: int, threads: int) -> int:
    """The arena of one pass over `images` images (each shared by `threads` threads where
    they outnumber the images), as memory_report states it under an ample budget."""
    return Engine.load(path, threads=threads, max_memory=2**40).memory_report(images).arena_bytes


@pytest.mark.parametrize("threads,batch,budget_images", [
    (1, 7, 3), (2, 7, 3), (2, 7, 5), (2, 2, 9), (3, 3, 9), (3, 7, 2), (2, 9, 99), (3, 2, 9)])
def test_the_schedule_is_the_best_that_fits(model_file, threads, batch, budget_images):
    """Not just safe: every arena the threads can use is used, each sub-batch is as large
    as the budget allows, and a batch of at least as many images as threads shares none.
    The budget is `budget_images` one-image arenas; sizes from memory_report."""
    path, _, _ = model_file
    one = _arena(path, 1, 1)
    budget = budget_images * one
    s = Engine.load(path, threads=threads, max_memory=budget).memory_report(batch).schedule
    if batch < threads:
        assert (s.sharing, s.arenas) == (threads, 1)
    else:
        assert s.sharing == 1, "as many images as threads (or more): each thread takes whole images"
        assert s.arenas == min(threads, batch, budget // one), "an arena the budget allows is left unused"
    per_arena = -(-batch // s.arenas)  # the most images one arena runs in the call
    arena = _arena(path, s.sub_batch, s.sharing if s.sharing > 1 else 1)
    assert s.arenas * arena <= budget
    if s.sub_batch < per_arena:
        bigger = _arena(path, s.sub_batch + 1, s.sharing if s.sharing > 1 else 1)
        assert s.arenas * bigger > budget, f"a sub-batch of {s.sub_batch + 1} fits too"
    else:
        assert s.sub_batch == per_arena


def test_a_copied_input_counts_against_the_budget(model_file):
    """A strided input is copied a sub-batch at a time: the copy of the largest sub-batch
    fits beside its arena, and one more image's would not."""
    path, _, x = model_file
    image = x[0].nbytes
    budget = _arena(path, 3, 1) + 3 * image - 1  # three images fit, but not with their copies
    engine = Engine.load(path, max_memory=budget)
    report = engine.memory_report(x=np.repeat(x, 2, axis=0)[::2])
    s = report.schedule
    assert report.input_copied and report.input_copy_bytes == s.sub_batch * image
    assert _arena(path, s.sub_batch, 1) + s.sub_batch * image <= budget
    assert _arena(path, s.sub_batch + 1, 1) + (s.sub_batch + 1) * image > budget
    assert s.sub_batch == 2
