"""A soak: 4 threads call forward at once, round after round, on a mix of engines
(materialized, sliced, row-streamed; 1 to 3 threads per engine; sub-batched by a small
max_memory), with batches of 1 to 5 images. Every output must equal its single-thread
reference (itself checked against PyTorch), and the process's resident memory must
not grow after warm-up.

Bounded in time: MNV2_SOAK_SECONDS (default 12) of rounds after the warm-up.
"""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mnv2engine import Engine, convert

from conftest import close, require

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2, randomized, run_with_blocks

SIZE = 64
SECONDS = float(os.environ.get("MNV2_SOAK_SECONDS", 12))
WARM_UP_ROUNDS = 3
CALLERS = 4
MODES = [dict(), dict(t=3), dict(rows=True), dict(rows=True, t=2)]
BATCHES = [1, 2, 5]
STATM = Path("/proc/self/statm")


def rss() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not STATM.exists(), reason="resident memory is read from /proc/self/statm (Linux)")
def test_soak_concurrent_calls_on_mixed_engines(tmp_path):
    model = randomized(MobileNetV2(num_classes=10, width_mult=0.5), seed=7)
    torch.save(model.state_dict(), tmp_path / "mnv2.pth")
    ws = convert(tmp_path / "mnv2.pth", tmp_path / "mnv2.h5", size=SIZE)
    x = np.random.default_rng(7).uniform(-1, 1, (max(BATCHES), SIZE, SIZE, 3)).astype(np.float32)
    want = run_with_blocks(model, x)["logits"]
    references = [Engine(ws, **mode).forward(x) for mode in MODES]
    for ref in references:
        close(ref, want)
    one_image = Engine(ws).memory_report(1).arena_bytes
    engines = [(Engine(ws, threads=threads, max_memory=budget, **mode), ref)
               for mode, ref in zip(MODES, references)
               for threads, budget in [(1, 2 * one_image), (2, 256 * 2**20), (3, 5 * one_image)]]
    failures = []

    def caller(index, round_):
        for k in range(len(engines)):  # every engine, in an order of its own, a batch of its own
            engine, ref = engines[(k * (index + 1) + round_) % len(engines)]
            n = BATCHES[(index + k + round_) % len(BATCHES)]
            out = engine.forward(x[:n])
            if not np.array_equal(out, ref[:n]):
                failures.append(f"{engine!r} threads={engine.threads} batch {n}: differs from its reference")

    samples, round_, end = [], 0, None
    while end is None or time.monotonic() < end:
        threads = [threading.Thread(target=caller, args=(i, round_)) for i in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), f"round {round_} hung"
        assert not failures, failures[:3]
        round_ += 1
        if round_ == WARM_UP_ROUNDS:
            end = time.monotonic() + SECONDS
        if round_ >= WARM_UP_ROUNDS:
            samples.append(rss())
    growth = max(samples) - samples[0]
    assert growth < 16 * 2**20, (f"resident memory grew by {growth / 2**20:.1f} MiB over {len(samples)} rounds "
                                 f"after warm-up: {[s // 2**20 for s in samples]} MiB")
