"""benchmarks/block_buffers.py: the buffers of block 1 it draws, against the architecture.

Block 1 of MobileNetV2 1.0/224 (Table 2, the first block of the (6, 24, 2, 2) row):
x 112x112x16 -> expand to 96 channels -> 3x3 depthwise, stride 2 -> y 56x56x24.
Every reference below is H * W * C * 4 bytes of those shapes, written out by hand, so a
wrong shape, lifetime or peak in the script (or in the planner it reads) fails here.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

from mnv2engine import Engine
from mnv2engine.budget import Schedule
from mnv2engine.report import MemoryReport

from conftest import require

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "block_buffers.py"
_spec = importlib.util.spec_from_file_location("block_buffers", SCRIPT)
bb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bb  # its dataclasses look their module up there
_spec.loader.exec_module(bb)

F32 = 4
HIDDEN = 96
X = 112 * 112 * 16 * F32            # 802,816: block0's output, block 1's input
E = 112 * 112 * HIDDEN * F32        # 4,816,896: the whole expansion
D = 56 * 56 * HIDDEN * F32          # 1,204,224: the whole depthwise output
Y = 56 * 56 * 24 * F32              # 301,056
E_ROW = 112 * HIDDEN * F32          # one row of the expansion
D_ROW = 56 * HIDDEN * F32           # one row of the depthwise output

REFERENCE_PEAK = {
    # x dies after expand, E after depthwise: the worst phase is depthwise, E + D
    "materialized": max(X + E, E + D, D + Y),
    # x, one slice of E and of D, and y are all held for the whole block
    "sliced": X + E // 4 + D // 4 + Y,
    # x, a 3-row line buffer of E, one row of D, y
    "rows": X + 3 * E_ROW + D_ROW + Y,
}


@pytest.fixture(scope="module")
def modes():
    return {m.kind: m for m in bb.gather(block=1, t=4)}


def test_the_block_is_table2s_block1(modes):
    assert set(modes) == {"materialized", "sliced", "rows"}
    for m in modes.values():
        b = m.block
        assert (b.in_size, b.cin, b.hidden, b.stride, b.out_size, b.cout) == \
            ((112, 112), 16, HIDDEN, 2, (56, 56), 24)
        assert m.boxes["x"].shape == (1, 112, 112, 16) and m.boxes["x"].nbytes == X
        assert m.boxes["y"].shape == (1, 56, 56, 24) and m.boxes["y"].nbytes == Y


def test_materialized_holds_E_and_D_whole_each_for_two_phases(modes):
    m = modes["materialized"]
    assert m.boxes["E"].shape == (1, 112, 112, HIDDEN) and m.boxes["E"].nbytes == E
    assert m.boxes["D"].shape == (1, 56, 56, HIDDEN) and m.boxes["D"].nbytes == D
    assert m.steps == ["expand", "depthwise", "project"]
    live = [sorted(b.role for b in m.live_at_step(s)) for s in range(3)]
    assert live == [["E", "x"], ["D", "E"], ["D", "y"]]


@pytest.mark.parametrize("t", [2, 4, 6])
def test_sliced_E_and_D_hold_hidden_over_t_channels(t):
    m = {m.kind: m for m in bb.gather(block=1, t=t)}["sliced"]
    c = HIDDEN // t
    assert m.t == t and len(m.steps) == t
    assert list(m.bounds) == [i * c for i in range(t + 1)]
    assert m.boxes["E"].shape == (112, 112, c) and m.boxes["E"].nbytes == E // t
    assert m.boxes["D"].shape == (56, 56, c) and m.boxes["D"].nbytes == D // t
    assert m.peak == X + E // t + D // t + Y


def test_rows_holds_a_3_row_line_buffer_and_one_depthwise_row(modes):
    m = modes["rows"]
    assert m.boxes["E"].shape == (3, 112, HIDDEN) and m.boxes["E"].nbytes == 3 * E_ROW
    assert m.boxes["D"].shape == (1, 56, HIDDEN) and m.boxes["D"].nbytes == D_ROW
    assert len(m.steps) == 56  # one step per output row


def test_line_buffer_holds_every_row_the_depthwise_reads(modes):
    """'same' padding, stride 2 on 112 rows pads (top 0, bottom 1): output row oy reads
    expansion rows 2*oy .. 2*oy + 2 (row 112 is padding)."""
    m = modes["rows"]
    for oy in range(56):
        lo, hi = m.expansion_rows(oy)
        assert hi - lo + 1 <= 3
        assert lo <= 2 * oy and min(2 * oy + 2, 111) <= hi


@pytest.mark.parametrize("kind", ["materialized", "sliced", "rows"])
def test_plotted_peak_is_the_planners_sum_of_live_buffers(modes, kind):
    m = modes[kind]
    assert m.peak == REFERENCE_PEAK[kind]
    # the drawn columns: the tallest stack of live rectangles is the peak in the title
    assert max(m.step_live_bytes(s) for s in range(len(m.steps))) == REFERENCE_PEAK[kind]
    # and it is what the engine's own memory report says for the block (the row-streamed
    # block on its own: rows=True runs it inside the row pipeline)
    if kind == "rows":
        report = MemoryReport(bb.rows_plan(Engine.random(rows=True)), Schedule(1, 1, 1, 1), 2**30)
    else:
        report = Engine.random(**{"materialized": dict(t=1), "sliced": dict(t=4)}[kind]).memory_report()
    assert report.steps[1].peak_live_bytes == REFERENCE_PEAK[kind]
    assert not m.others  # nothing else is live during block 1


@pytest.mark.parametrize("kind", ["materialized", "sliced", "rows"])
def test_drawn_rectangles_of_live_buffers_do_not_overlap(modes, kind):
    m = modes[kind]
    for s in range(len(m.steps)):
        spans = sorted((b.offset, b.offset + b.nbytes) for b in m.live_at_step(s))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (s, spans)


def test_png_is_written(modes, tmp_path):
    path = tmp_path / "block_buffers.png"
    require("matplotlib")  # the plots extra
    bb.plot(list(modes.values()), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
