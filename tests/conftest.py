import importlib
import importlib.util
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MNV2_TEST_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    import rebuilds
    config.rebuilds_folder = rebuilds.open_session()
    if getattr(config.option, "dist", None) == "load":  # pytest -n N: a module's tests on one worker,
        config.option.dist = "loadfile"  # its fixtures (a Ray cluster, converted models) made once


def pytest_unconfigure(config):
    import rebuilds
    rebuilds.close_session(getattr(config, "rebuilds_folder", None))


def pytest_collection_finish(session):
    """Start the other builds' runs of the collected tests now, in the background (rebuilds.py)."""
    import rebuilds
    if not session.config.option.collectonly:
        rebuilds.start([m.args[0] for item in session.items for m in item.iter_markers("rebuild")])


def pytest_sessionfinish(session, exitstatus):
    import rebuilds
    stopped = session.shouldstop or session.shouldfail  # -x and --maxfail set shouldfail
    rebuilds.stop(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED or bool(stopped))


def close(actual, reference, rel=1e-4):
    """max |diff| <= rel * max |reference|, with the figures in the failure message."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"shape {actual.shape} != reference {reference.shape}"
    scale = float(np.abs(reference).max())
    diff = float(np.abs(actual.astype(np.float64) - reference).max())
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} * max |ref| {scale:.3g}"


def forward_peak(engine, x) -> int:
    """tracemalloc's peak over one engine.forward(x) that allocates its arena, after a
    first call has compiled the kernels and made the plan. An engine whose threads share
    an image takes the last such call's arena (Engine._arena), so there the call traced
    is the first of a twin engine on the same weights, its plan made beforehand."""
    engine.forward(x)
    if engine.threads > len(x):
        engine = type(engine)(engine.weights, t=engine.t, rows=engine.rows, threads=engine.threads,
                              max_memory=engine.max_memory)
        engine.plan(len(x), engine.threads, x.shape[1:3])
    return traced(lambda: engine.forward(x))[1]


def traced(call):
    """(call(), tracemalloc's peak over it), the other builds' runs quiet meanwhile
    (rebuilds.QUIET: tracemalloc counts every thread)."""
    import rebuilds
    with rebuilds.QUIET:
        return _traced(call)


def _traced(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def slicing_modes(arch) -> dict[str, dict]:
    """Engine settings other than t = 1: t = 2, uneven slices, one channel per slice
    (t = expansion width), row streaming."""
    return {"t=2": dict(t=2), "t=3": dict(t=3), "t=5": dict(t=5),
            "t=width": dict(t=[b.hidden for b in arch.blocks]),
            "rows": dict(rows=True), "rows,t=3": dict(rows=True, t=3)}


# Top-level modules a run leaves out on purpose, comma-separated: what needs them skips,
# even under CI (the emulated ARM job of .ci/arm sets MNV2_WITHOUT=torch: no torch there).
WITHOUT = "MNV2_WITHOUT"


def skip_unless_ci(msg: str):
    """Skip what needs a missing reference; under CI fail instead, so that a broken
    install cannot pass as a green run with its checks skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " -- required under CI", pytrace=False)
    pytest.skip(msg, allow_module_level=True)


def require(module: str):
    """`pytest.importorskip`, but failing under CI (see skip_unless_ci), unless the run
    names the module as left out on purpose (MNV2_WITHOUT)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if module.split(".")[0] in os.environ.get(WITHOUT, "").replace(" ", "").split(","):
            pytest.skip(f"{module} does not import, left out on purpose ({WITHOUT}={os.environ[WITHOUT]})",
                        allow_module_level=True)
        skip_unless_ci(f"{module} does not import ({e})")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared folder of real weights and photos; skipped where absent, but under CI a
    missing folder is a failure, not a skip."""
    if not (DATA / "models").is_dir():
        skip_unless_ci(f"test data folder {DATA} not found (set MNV2_TEST_DATA to its path)")
    return DATA


@pytest.fixture(scope="session")
def photo_paths(shared_data) -> list[Path]:
    """The real photos of the shared folder, in name order."""
    paths = sorted(p for p in (shared_data / "images").iterdir() if p.suffix.lower() in (".bmp", ".jpg", ".png"))
    assert paths, f"no photos in {shared_data / 'images'}"
    return paths


def probabilities(predictions, classes: int) -> np.ndarray:
    """predict's (index, label, probability) lists (top = classes) as a [N, classes] array."""
    out = np.zeros((len(predictions), classes))
    for row, prediction in zip(out, predictions):
        assert len(prediction) == classes
        for i, _, p in prediction:
            row[i] = p
    return out


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
