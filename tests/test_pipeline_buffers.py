"""benchmarks/pipeline_buffers.py: the walk it replays is the pipeline's, and its rings
fit the buffers the planner gave them (1.0/224, rows=True)."""
import pytest

from conftest import load_benchmark, require

pb = load_benchmark("pipeline_buffers")


@pytest.fixture(scope="module")
def pipeline():
    return pb.gather()


def test_the_walk_makes_every_row_of_every_piped_tensor_once(pipeline):
    p = pipeline
    for i, block in enumerate(p.blocks):
        made_e = [s.row for s in p.steps if s.block == i and s.kind == "E"]
        made_y = [s.row for s in p.steps if s.block == i and s.kind == "y"]
        assert made_e == list(range(block.in_size[0])), block.name  # no row twice: no recomputation
        assert made_y == list(range(block.out_size[0])), block.name


def test_no_ring_ever_holds_more_rows_than_the_planner_gave_it(pipeline):
    p = pipeline
    for k, step in enumerate(p.plan.steps[:p.plan.piped]):
        e_rows = max(hi - lo + 1 for span in p.held[k]["E"] if span for lo, hi in [span])
        assert e_rows <= 3, step.block.name  # the depthwise window
        if step.block.stride == 2:  # folded: one E row, two rows of sums
            assert step.e.shape[-3] == 1 and step.d.shape[-3] == 2
        else:
            assert step.e.shape[-3] == 3
        if k < p.plan.piped - 1:
            y_rows = max(hi - lo + 1 for span in p.held[k]["y"] if span for lo, hi in [span])
            assert y_rows <= step.y.shape[-3], (step.block.name, y_rows, step.y.shape)


def test_the_pipeline_covers_the_112_and_56_blocks_within_half_a_mib(pipeline):
    p = pipeline
    assert [b.in_size[0] for b in p.blocks] == [112, 112, 56, 56]
    assert p.plan.peak_bytes <= 2**20 / 2


def test_png_is_written(pipeline, tmp_path):
    path = tmp_path / "pipeline_buffers.png"
    require("matplotlib")  # the plots extra
    pb.plot(pipeline, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
