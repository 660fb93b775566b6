"""Faults never hang the caller: a thread that fails anywhere gives the forward pass up,
the caller raises an EngineError naming the cause, and the next call is right.

Faults are injected by wrapping the network kernel the engine calls on each thread
(`mnv2engine.engine.forward`): before it, between its blocks (the other threads then
wait inside a barrier), or by a thread that stops arriving at barriers at all. The
references are PyTorch's logits for the same weights.
"""
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mnv2engine.engine as engine_module
from mnv2engine import Engine, EngineError, affinity, convert
from mnv2engine.kernels import sync as sync_module
from mnv2engine.kernels.network import forward as real_forward, run_block

from conftest import close, require

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2, randomized, run_with_blocks

SIZE = 64
HANG = 5.0  # seconds: a call that has not returned by then is hung (it takes milliseconds)


@pytest.fixture(autouse=True)
def patience(monkeypatch):
    """A barrier's last defence (giving up after PATIENCE without progress) must not
    hide a missing give-up: it comes after HANG here, and still frees the threads of a
    failed test soon after."""
    monkeypatch.setattr(sync_module, "PATIENCE", HANG + 3)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A PyTorch model's weights as mnv2.h5, the model's logits on x, and x."""
    model = randomized(MobileNetV2(num_classes=10, width_mult=0.35), seed=15)
    folder = tmp_path_factory.mktemp("faults")
    torch.save(model.state_dict(), folder / "mnv2.pth")
    convert(folder / "mnv2.pth", folder / "mnv2.h5", size=SIZE)
    x = np.random.default_rng(15).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    engine = Engine.load(folder / "mnv2.h5", threads=2)  # compile forward and run_block before timing calls
    engine.forward(x[:1])
    engine.intermediates(x[:1])
    return folder / "mnv2.h5", run_with_blocks(model, x)["logits"], x


def within(seconds, fn, *args):
    """fn(*args) on another thread; its result, or the exception it raised; fails the
    test if it has not returned within `seconds`."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            box["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung: no return within {seconds} s"
    return box


def failing(who, where, blocks_before=3):
    """A stand-in for network.forward where thread `who` ('helper': tid 1, 'caller':
    tid 0) raises, `where` = 'before' its kernel or 'inside' it, after `blocks_before` blocks."""
    victim = 1 if who == "helper" else 0

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled):
        if tid == victim:
            if where == "inside":
                for i in range(blocks_before):
                    run_block(arena, params, ints, blocks, cuts, state, image, i, tid, threads, sync, *compiled)
            raise RuntimeError(f"injected fault on thread {tid}")
        real_forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled)
    return forward


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(threads=2), dict(threads=2, rows=True), dict(threads=3, t=3)], ids=str)
@pytest.mark.parametrize("who,where", [("helper", "before"), ("helper", "inside"),
                                       ("caller", "before"), ("caller", "inside")])
def test_a_failing_thread_never_hangs_the_caller(model_file, monkeypatch, kw, who, where):
    path, want, x = model_file
    engine = Engine.load(path, **kw)
    engine.forward(x[:1])  # compile forward and run_block outside the HANG window
    engine.intermediates(x[:1])
    monkeypatch.setattr(engine_module, "forward", failing(who, where))
    box = within(HANG, engine.forward, x[:1])
    assert isinstance(box.get("error"), EngineError), box
    assert "injected fault" in str(box["error"]) and "RuntimeError" in str(box["error"])
    monkeypatch.undo()
    close(engine.forward(x[:1]), want[:1])
    close(engine.forward(x), want)


@pytest.mark.parametrize("blocks_before", [0, 3, "all but the last"])
@pytest.mark.parametrize("who", ["helper", "caller"])
def test_a_given_up_pass_stops_the_other_thread_at_the_end_of_its_block(model_file, monkeypatch, who, blocks_before):
    """Once a thread fails, the other must not run on through the network on the garbage
    its barriers now let through: it ends the block it is in and returns, before the head.
    Where it stopped is read from the pass's state: the barriers each thread entered (a
    materialized block ends each of its three phases at one); and the logits (10 classes:
    one panel, the helper's share) must never be written. The caller raises only once the
    other thread has returned (the helper, slowed here on its way out), so that the engine's
    helpers are free for the next call."""
    path, want, x = model_file
    engine = Engine.load(path, threads=2)
    engine.forward(x[:1])
    blocks = len(engine.arch.blocks)
    k = blocks - 1 if blocks_before == "all but the last" else blocks_before
    victim, other = (1, 0) if who == "helper" else (0, 1)
    seen = {}
    fault = failing(who, "inside" if k else "before", k)

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled):
        seen["sync"], seen["out"] = sync, out
        fault(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled)
        time.sleep(0.05)
        seen["returned"] = True  # only the other thread gets here
    monkeypatch.setattr(engine_module, "forward", forward)
    monkeypatch.setattr(engine, "_output", lambda images: np.full((images, 10), np.nan, np.float32))
    box = within(HANG, engine.forward, x[:1])
    assert isinstance(box.get("error"), EngineError) and "injected fault" in str(box["error"]), box
    assert seen.get("returned"), "the caller raised while the other thread was still running"
    sync = seen["sync"]
    entered = [int(sync[sync_module.LINE * (1 + tid) + sync_module.PASSED]) for tid in range(2)]
    assert entered[victim] == 3 * k, entered  # the fault came after k whole blocks
    assert 3 * k <= entered[other] <= 3 * (k + 1), \
        f"after a fault in block {k}, the other thread entered {entered[other]} barriers (3 per block, " \
        f"{3 * blocks + 2} in a whole pass)"
    assert np.isnan(seen["out"]).all(), "the head ran after the pass was given up"
    monkeypatch.undo()
    close(engine.forward(x[:1]), want[:1])


def test_a_helper_failing_in_its_setup_is_named(model_file, monkeypatch):
    path, want, x = model_file
    engine = Engine.load(path, threads=2)

    def leave(cpu):
        raise MemoryError("injected fault while leaving the caller's core")
    monkeypatch.setattr(affinity, "leave", leave)
    box = within(HANG, engine.forward, x[:1])
    assert isinstance(box.get("error"), EngineError) and "injected fault" in str(box["error"]), box
    monkeypatch.undo()
    close(engine.forward(x[:1]), want[:1])


def test_affinity_errors_are_ignored(model_file, monkeypatch):
    """As in a container whose cpuset changes: sched_setaffinity raises EINVAL."""
    path, want, x = model_file
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(affinity.os, "sched_setaffinity", refuse)
    engine = Engine.load(path, threads=2)  # a new helper thread: it has not moved yet
    box = within(HANG, engine.forward, x[:1])
    assert "error" not in box, box
    close(box["result"], want[:1])
    if affinity.current_cpu() >= 0 and len(affinity.os.sched_getaffinity(0)) > 1:
        assert calls, "the fault was not injected: the helper never tried to move"
    monkeypatch.setattr(affinity.os, "sched_getaffinity", refuse)
    close(Engine.load(path, threads=2).forward(x[:1]), want[:1])


def test_a_thread_that_stops_arriving_is_given_up_after_the_patience(model_file, monkeypatch):
    """The last defence: a helper stops (here: sleeps between blocks) without failing;
    the caller, waiting in a barrier, sees no progress for PATIENCE and gives up."""
    path, want, x = model_file
    engine = Engine.load(path, threads=2)
    monkeypatch.setattr(sync_module, "PATIENCE", 0.3)

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled):
        if tid == 1:
            run_block(arena, params, ints, blocks, cuts, state, image, 0, tid, threads, sync, *compiled)
            end = time.monotonic() + HANG
            while sync[sync_module.STATE] == sync_module.RUNNING and time.monotonic() < end:
                time.sleep(0.01)
            return
        real_forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled)
    monkeypatch.setattr(engine_module, "forward", forward)
    box = within(HANG, engine.forward, x[:1])
    assert isinstance(box.get("error"), EngineError) and "no progress for 0.3 s" in str(box["error"]), box
    monkeypatch.undo()
    close(engine.forward(x[:1]), want[:1])


def test_a_thread_failing_on_its_share_of_a_batch_stops_the_others(model_file, monkeypatch):
    """Batch larger than the threads: each takes whole images, in sub-batches; after a
    failure on one, the other stops at its next sub-batch. A sub-batch of the caller's
    starts only once the helper's failure has given the batch up, so it must be its last
    (or it has none: the failure came before its first)."""
    path, want, x = model_file
    engine = Engine.load(path, threads=2, max_memory=2 * Engine.load(path).memory_report(1).arena_bytes)
    batch = np.concatenate([x] * 4)  # 12 images, 6 per thread, 1 per sub-batch
    passes, states = [], []
    real_new_sync = engine_module.new_sync

    def new_sync(threads):  # the first one made is the batch's: the failure gives it up
        states.append(real_new_sync(threads))
        return states[-1]

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled):
        passes.append(threading.current_thread().name)
        if threading.current_thread().name.startswith("mnv2-helper"):
            raise RuntimeError("injected fault on a helper's share")
        end = time.monotonic() + HANG / 2
        while states[0][sync_module.STATE] == sync_module.RUNNING and time.monotonic() < end:
            time.sleep(0.001)
        real_forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *compiled)
    monkeypatch.setattr(engine_module, "new_sync", new_sync)
    monkeypatch.setattr(engine_module, "forward", forward)
    box = within(HANG, engine.forward, batch)
    assert isinstance(box.get("error"), EngineError) and "injected fault" in str(box["error"]), box
    callers = [name for name in passes if not name.startswith("mnv2-helper")]
    assert len(callers) <= 1, f"the caller went on with its share after the helper failed: {len(callers)} passes"
    monkeypatch.undo()
    close(engine.forward(batch), np.concatenate([want] * 4))


CHILD = """
import faulthandler, signal, sys, time
import numpy as np
from mnv2engine import Engine
# A process started in the background by a shell (CI runners, nohup ... &) inherits SIGINT
# ignored, and so would this child: then Ctrl-C could never reach it.
signal.signal(signal.SIGINT, signal.default_int_handler)
engine = Engine.load(sys.argv[1], threads=2)
x = np.load(sys.argv[2])
engine.forward(x)
try:  # from here on: a SIGINT must land inside the try, however late this process runs
    print("ready", flush=True)
    faulthandler.dump_traceback_later(40)  # if stuck: where, on stderr, before the test gives up
    while True:
        engine.forward(x)
except KeyboardInterrupt:
    faulthandler.cancel_dump_traceback_later()
    print("interrupted", flush=True)
np.save(sys.argv[3], engine.forward(x))
"""


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3], ids=["shared image", "split batch"])
def test_ctrl_c_during_a_two_thread_forward_returns_and_leaves_the_engine_usable(model_file, tmp_path, batch):
    path, want, x = model_file
    np.save(tmp_path / "x.npy", x[:batch])
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(tmp_path / "x.npy"),
                              str(tmp_path / "after.npy")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # every wait bounded: a child that never answers fails the test, and is killed
        ready = within(120, child.stdout.readline)["result"].strip()
        time.sleep(0.5)  # well inside the loop of forward calls
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        interrupted = within(60, child.stdout.readline)["result"].strip()
        took = time.monotonic() - sent
        code = child.wait(60)
    except AssertionError as e:  # hung: with the child's stderr (its threads' tracebacks after 40 s)
        child.kill()
        raise AssertionError(f"{e}; the child's stderr:\n{child.stderr.read()}") from None
    finally:
        child.kill()
        err = child.stderr.read()
    assert (ready, interrupted, code) == ("ready", "interrupted", 0), err
    assert took < HANG, f"Ctrl-C took {took:.1f} s to stop a forward call"
    close(np.load(tmp_path / "after.npy"), want[:batch])
