"""The paper's Section 5: sliced and row-streamed blocks equal the materialized ones, and
the memory the planner promises is the memory a forward call really takes."""

import numpy as np
import pytest
from numba.core.runtime import _nrt_python, rtsys

from mnv2engine import Engine
from mnv2engine.plan import layout_plan

from conftest import close, forward_peak, slicing_modes
from torch_reference import reference_and_engine, run_with_blocks


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.35, 1.0, 1.4])
def test_every_mode_equals_materialized_block_by_block(alpha):
    size = 96
    base = Engine.random(alpha=alpha, size=size, classes=20, seed=7)
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    ref = base.intermediates(x)
    for label, kw in slicing_modes(base.arch).items():
        got = Engine(base.weights, **kw).intermediates(x)
        for name, want in ref.items():
            try:
                close(got[name], want, 1e-5)
            except AssertionError as e:
                raise AssertionError(f"{label}, {name}: {e}") from None


@pytest.mark.parametrize("alpha", [0.35, 1.4])
def test_every_mode_matches_pytorch_in_forward(tmp_path, alpha):
    """forward() runs the one-call network program, not intermediates()'s block by block
    path: every mode of it against PyTorch (symmetric padding; test_keras has 'same')."""
    size = 67
    model, base = reference_and_engine(tmp_path, alpha, size, 20, seed=8)
    x = np.random.default_rng(2).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    want = run_with_blocks(model, x)["logits"]
    for label, kw in {"t=1": {}, **slicing_modes(base.arch)}.items():
        try:
            close(Engine(base.weights, **kw).forward(x), want)
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from None


def test_slices_may_differ_per_block():
    e = Engine.random(alpha=0.35, size=64, classes=5, t=[1, 2, 3] * 5 + [4, 7])
    assert [len(s.bounds) - 1 for s in e.plan().steps] == [1, 2, 3] * 5 + [4, 7]
    # uneven: 3 slices of block1's 96... channels differ by at most one
    sizes = np.diff(e.plan().steps[2].bounds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == e.arch.blocks[2].hidden


def test_row_streamed_slices_fall_on_whole_vectors():
    """rows=True: slice edges on multiples of 16 wherever the expansion is a multiple of
    16, as near-equal as that allows, and no slice narrower than 16 (block 0's 32
    channels: 2 slices at t=4); elsewhere, and without rows, the paper's n / t."""
    rows = Engine.random(alpha=1.0, size=64, classes=5, t=4, rows=True)
    whole = Engine.random(alpha=1.0, size=64, classes=5, t=4)
    for block, r, w in zip(rows.arch.blocks, rows.blocks, whole.blocks):
        by_rows, by_paper = np.diff(r.bounds), np.diff(w.bounds)
        assert len(by_paper) == 4 and by_paper.max() - by_paper.min() <= 1 and by_paper.sum() == block.hidden
        assert (by_rows > 0).all() and by_rows.sum() == block.hidden
        if block.hidden % 16 == 0:
            assert len(by_rows) == min(4, block.hidden // 16), block.name
            assert (by_rows % 16 == 0).all() and by_rows.max() - by_rows.min() <= 16, block.name
        else:
            assert list(by_rows) == list(by_paper), block.name
    assert [list(np.diff(r.bounds)) for r in rows.blocks[:4]] == [[16, 16], [16, 32, 16, 32], [32, 32, 32, 48],
                                                                   [32, 32, 32, 48]]


@pytest.mark.parametrize("kw", [dict(t=1), dict(t=2), dict(t=4), dict(rows=True), dict(rows=True, t=4),
                                dict(rows=True, threads=2)],
                         ids=str)
def test_tracemalloc_peak_matches_the_planner(kw):
    engine = Engine.random(alpha=1.0, size=224, **kw)
    x = np.zeros((1, 224, 224, 3), np.float32)
    planned = engine.memory_report().peak_bytes
    measured = forward_peak(engine, x)
    assert abs(measured - planned) <= 0.05 * planned and measured <= planned + 64 * 1024, \
        f"tracemalloc peak {measured} vs planner {planned}"
    if kw.get("t", 1) > 1 or kw.get("rows"):
        # The peak bounds every single allocation: none is as large as the biggest full expansion.
        full = max(b.in_size[0] * b.in_size[1] * b.hidden * 4 for b in engine.arch.blocks)
        assert measured < full
        for step in engine.plan().steps:
            if step.streamed or len(step.bounds) > 2:
                h, w = step.block.in_size
                assert step.e.nbytes < h * w * step.block.hidden * 4, step.block.name


@pytest.mark.parametrize("t,batch", [(1, 1), (4, 1), (1, 3)])
def test_rows_mode_streams_only_where_the_peak_needs_it(t, batch):
    """Rows mode keeps the lowest peak of a row pipeline of any depth followed by
    streaming every other block, but runs the late blocks whole."""
    engine = Engine.random(alpha=1.0, size=224, rows=True, t=t)
    arch, bounds = engine.arch, [w.bounds for w in engine.blocks]
    plan = engine.plan(batch)
    h, w = arch.blocks[-1].out_size
    n = len(arch.blocks)
    for piped in range(n + 1):  # no other depth of the pipeline, every other block streamed, is lower
        assert plan.arena_bytes <= layout_plan(arch, bounds, [True] * n, w, batch, 1, piped).arena_bytes, piped
    if (t, batch) == (1, 1):
        assert round(plan.arena_bytes / 2**20, 2) == 0.47  # the README's figure
    # 1.0/224: the stem and the 112x112 and 56x56 blocks are piped, the 28x28 ones streamed
    assert plan.piped == 4 and [step.piped for step in plan.steps[:5]] == [True] * 4 + [False]
    streamed = [step.streamed for step in plan.steps]
    if batch == 1:  # at batch 3 the lower peak leaves no room for whole late blocks
        assert streamed[4] and not streamed[-1], streamed


def test_no_kernel_allocates_inside_numba():
    """Numba's runtime counts every allocation. Per forward call, the count must depend
    on nothing but the passes the call makes (rows=True takes a batch one image at a
    time): not on t, the mode or the batch. Then nothing is allocated per block, slice,
    row or image, and what is counted is the fixed set of array arguments crossing into
    the kernels (the row pipeline is one call for its blocks, so a count per block call
    would differ between the modes)."""
    _nrt_python.memsys_enable_stats()
    counts = {}  # passes -> {label: allocations}
    for label, kw in [("t=1", {}), ("t=4", dict(t=4)), ("rows", dict(rows=True)), ("rows, t=3", dict(rows=True, t=3))]:
        for batch in (1, 3):
            engine = Engine.random(alpha=0.35, size=64, classes=5, **kw)
            x = np.zeros((batch, 64, 64, 3), np.float32)
            engine.forward(x)  # compiled, planned
            before = rtsys.get_allocation_stats()
            engine.forward(x)
            passes = -(-batch // engine.memory_report(batch).schedule.sub_batch)
            counts.setdefault(passes, {})[f"{label}, batch {batch}"] = rtsys.get_allocation_stats().alloc - before.alloc
    assert sorted(counts) == [1, 3], counts
    for passes, by_label in counts.items():
        assert len(set(by_label.values())) == 1, (passes, by_label)


@pytest.mark.parametrize("kw", [dict(t=1), dict(t=3), dict(rows=True)], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_planner_never_overlaps_live_buffers(kw, batch):
    plan = Engine.random(alpha=0.75, size=100, classes=3, **kw).plan(batch)
    bufs = plan.buffers
    for i, a in enumerate(bufs):
        assert a.offset % 64 == 0 and a.offset + a.nbytes <= plan.arena_bytes
        for b in bufs[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)


def test_memory_report_lists_live_tensors_but_not_the_callers_input():
    report = Engine.random(alpha=1.0, size=224, t=1).memory_report()
    block0 = report.steps[0]
    assert {n for n, _, _ in block0.live} == {"block0/expanded", "block0/depthwise", "block0/output"}
    assert not report.input_copied and "read in place" in str(report)
    assert report.peak_bytes == report.arena_bytes + 1000 * 4
    assert report.ideal_bytes <= report.peak_bytes
    assert "block1" in str(report) and "peak" in str(report)
