"""Integer rows: the row pipeline and the row-streamed blocks, against LiteRT's reference kernels.

Every activation that exists whole (the pipeline's last output, the later blocks'
outputs, the head, the pool, the logits) equals the one LiteRT's reference kernels
(BUILTIN_REF) make, byte for byte, on a photo and a random input of both shared models,
at t = 1 and t = 4; tracemalloc's peak over a forward agrees with memory_report.
"""
import numpy as np
import pytest

from mnv2engine import Engine

from conftest import forward_peak
from test_quantized_engine import ARCH, MODELS, invoke, litert, photo
from tflite_edit import engine_names, unpack


@pytest.fixture(scope="module", params=MODELS)
def path(request, shared_data):
    return shared_data / "models" / request.param


def _input(shared_data, source):
    if source == "random":
        return np.random.default_rng(3).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    return photo(shared_data, source)


@pytest.mark.parametrize("t", [1, 4])
@pytest.mark.parametrize("source", ["parrot.jpg", "random"])
def test_every_whole_activation_is_litert_reference_kernels_byte_for_byte(path, shared_data, source, t):
    engine = Engine.load(path, rows=True, t=t)
    assert engine.quantized and engine.rows
    plan = engine.memory_report().plan
    assert plan.piped > 0 and any(step.streamed for step in plan.steps)  # both row kernels run
    x = _input(shared_data, source)
    it = litert(path, reference=True)
    invoke(it, x)
    ops = engine_names(unpack(path.read_bytes()), ARCH)
    got = engine.intermediates(x)
    last_piped = plan.steps[plan.piped - 1].block
    assert {"classifier", "pool", "head", f"{last_piped.name}/project"} <= set(got) <= set(ops)
    assert not any(name.startswith(f"block{i}/") for i in range(last_piped.index) for name in got)
    for name, mine in got.items():
        want = it.get_tensor(ops[name].outputs[0])
        assert mine.dtype == want.dtype, name
        assert np.array_equal(mine.reshape(want.shape), want), \
            f"{name}: {np.count_nonzero(mine.reshape(want.shape) != want)} of {want.size} values differ"
    logits = engine.forward(x)
    assert np.array_equal(logits, Engine.load(path).forward(x))  # the materialized integer logits


@pytest.mark.parametrize("t", [1, 4])
def test_the_memory_is_the_int8_rows_planners(path, t):
    """int8 input is read in place: the peak is the plan's arena and the logits."""
    engine = Engine.load(path, rows=True, t=t)
    x = np.random.default_rng(5).integers(-128, 128, (1, 224, 224, 3), dtype=np.int8)
    report = engine.memory_report(x=x)
    assert not report.input_copied
    if t > 1:
        assert any(buf.dtype == "int32" and not buf.whole for buf in report.plan.buffers)  # one row of sums
    measured = forward_peak(engine, x)
    print(f"\n{path.name} int8 rows t={t}: tracemalloc peak {measured:,} B ({measured / 2**20:.3f} MiB), "
          f"memory_report {report.peak_bytes:,} B")
    assert abs(measured - report.peak_bytes) <= 0.05 * report.peak_bytes + 16 * 1024, (measured, report.peak_bytes)
