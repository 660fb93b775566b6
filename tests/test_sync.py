"""The spin barrier of threads that share an image (kernels/sync.py), made to fail
deterministically: a thread that arrives late on purpose must be waited for.

A barrier that lets a thread through early only shows in the numbers when the other
thread happens to be slow; here it always is. The kernels below run on Python threads,
nogil, as the engine runs its helpers; one thread delays (spinning on the clock) until
the others have arrived, then writes, and the others read after the barrier. The engine
tests delay one thread before its forward pass, over an arena filled with NaN, and
compare the logits with PyTorch's.
"""
import threading
import time

import numpy as np
import pytest
from numba import njit

import mnv2engine.engine as engine_module
from mnv2engine import Engine
from mnv2engine.kernels.network import forward as real_forward
from mnv2engine.kernels.sync import (FAILED, LINE, PASSED, PATIENCE_NS, RUNNING, STALLED, STATE, atomic_add,
                                     atomic_load, await_release, balanced_share, barrier, give_up, given_up,
                                     new_sync, now_ns, release, share)
from mnv2engine.memory import allocate

from conftest import close

HANG = 60.0  # seconds: a thread that has not returned by then is hung (a first call compiles, slowly under emulation)
DELAY_NS = 20_000_000  # how long a late thread spins after the others have arrived
SIZE = 64


@njit(nogil=True)
def _wait_for_signal(counter, i, target, limit_ns):
    """Spin until counter[i] >= target, or limit_ns has passed."""
    end = now_ns() + limit_ns
    while atomic_load(counter, i) < target and now_ns() < end:
        pass


@njit(nogil=True)
def _meet(sync, tid, threads, rounds, arrived, written, seen):
    """`rounds` barriers. In round r, thread (r + 1) % threads is late: it waits until every
    other thread has said it is at the barrier (arrived[r]), spins DELAY_NS more, then writes
    written[r]; every other thread reads written[r] after the barrier, into seen[tid, r]."""
    for r in range(rounds):
        late = (r + 1) % threads
        if tid == late:
            _wait_for_signal(arrived, r, threads - 1, 10 * DELAY_NS)
            end = now_ns() + DELAY_NS
            while now_ns() < end:
                pass
            written[r] = r + 1
        else:
            atomic_add(arrived, r, 1)
        barrier(sync, tid, threads)
        if tid != late:
            seen[tid, r] = atomic_load(written, r)


@njit(nogil=True)
def _released(sync, tid, entered, written, seen):
    """Say so, wait for the caller's release, then read what the caller wrote before it."""
    atomic_add(entered, 0, 1)
    await_release(sync, tid)
    seen[0] = atomic_load(written, 0)


def on_threads(fn, calls):
    """fn(*args) for every args of calls, each on its own Python thread; fails the test if
    one has not returned within HANG."""
    threads = [threading.Thread(target=fn, args=args, daemon=True) for args in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert not any(t.is_alive() for t in threads), f"hung: no return within {HANG} s"


def patient(threads, seconds):
    """A pass's state whose waiting threads give up after `seconds` without progress."""
    sync = new_sync(threads)
    sync[PATIENCE_NS] = int(seconds * 1e9)
    return sync


@pytest.mark.parametrize("threads", [2, 3])
def test_every_thread_waits_at_the_barrier_for_a_late_one(threads):
    """Each round has another late thread (thread 0 too); with 3 threads, two arrive on
    time, so a barrier that waits for one arrival too few lets them through."""
    rounds = 2 * threads
    sync = patient(threads, 2.0)  # a barrier that waits for one arrival too many stalls
    arrived, written = np.zeros(rounds, np.int64), np.zeros(rounds, np.int64)
    seen = np.zeros((threads, rounds), np.int64)
    on_threads(_meet, [(sync, tid, threads, rounds, arrived, written, seen) for tid in range(threads)])
    assert sync[STATE] == RUNNING, "a thread gave the pass up: the barrier never let it through"
    for r in range(rounds):
        for tid in range(threads):
            if tid != (r + 1) % threads:
                assert seen[tid, r] == r + 1, f"round {r}: thread {tid} passed the barrier before thread " \
                                              f"{(r + 1) % threads} arrived"


def test_a_helper_waits_for_the_callers_release_and_the_caller_does_not():
    sync = patient(2, 2.0)
    entered, written, seen = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)
    helper = threading.Thread(target=_released, args=(sync, 1, entered, written, seen), daemon=True)
    helper.start()
    end = time.monotonic() + HANG
    while entered[0] == 0 and time.monotonic() < end:
        time.sleep(0.001)
    time.sleep(0.05)  # the helper is inside await_release by now
    written[0] = 1
    release(sync)
    helper.join(HANG)
    assert not helper.is_alive() and sync[STATE] == RUNNING
    assert seen[0] == 1, "the helper returned before the caller released it"
    caller = patient(2, 0.5)  # never released: the caller must not wait for that
    await_release(caller, 0)
    assert caller[STATE] == RUNNING, "the caller waited for its own release"


@pytest.mark.parametrize("at", ["barrier", "release"])
def test_giving_a_pass_up_frees_a_waiting_thread(at):
    """The other thread never arrives (it failed): give_up, not the patience, frees it."""
    sync = patient(2, 3.0)
    waiting = threading.Thread(target=barrier if at == "barrier" else await_release,
                               args=(sync, 1, 2) if at == "barrier" else (sync, 1), daemon=True)
    assert not given_up(sync)
    waiting.start()
    time.sleep(0.05)
    give_up(sync)
    assert given_up(sync)
    waiting.join(HANG)
    assert not waiting.is_alive()
    assert sync[STATE] == FAILED, "the thread left by its patience, not by the give-up"


def test_a_lone_thread_gives_up_after_the_patience():
    sync = patient(2, 0.2)
    on_threads(barrier, [(sync, 0, 2)])
    assert sync[STATE] == STALLED and given_up(sync)
    give_up(sync)
    assert sync[STATE] == STALLED, "a stalled pass stays stalled (the engine says why)"


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 8])
def test_shares_cover_the_range_once_and_near_equally(threads):
    for n in range(0, 40):
        parts = [share(n, tid, threads) for tid in range(threads)]
        assert parts[0][0] == 0 and parts[-1][1] == n, (n, parts)
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), (n, parts)
        sizes = [hi - lo for lo, hi in parts]
        assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1, (n, parts)
        for tid in range(threads):  # anything but two threads on two rows or more: share()
            if threads != 2 or n < 2:
                assert balanced_share(n // 3, n, tid, threads) == parts[tid]


def test_two_threads_cut_a_balanced_share_where_it_was_learned():
    for n in range(2, 30):
        for cut in range(-1, n + 2):
            first, second = balanced_share(cut, n, 0, 2), balanced_share(cut, n, 1, 2)
            if 0 < cut < n:
                assert (first, second) == ((0, cut), (cut, n))
            else:  # not learned (0), or out of range: half way
                assert first[0] == 0 and first[1] == second[0] and second[1] == n and abs(n - 2 * first[1]) <= 1


@pytest.fixture(scope="module")
def pytorch(tmp_path_factory):
    """(an Engine on a PyTorch model's weights, the model's logits as a function of x);
    imported here, so that the barrier's own tests run without torch (.ci/arm)."""
    from torch_reference import reference_and_engine, run_with_blocks
    model, engine = reference_and_engine(tmp_path_factory.mktemp("sync"), 0.35, SIZE, 10, seed=11)
    return engine, lambda x: run_with_blocks(model, x)["logits"]


def poisoned(nbytes, images, shared):
    """An arena full of NaN: a thread that reads a row before the other has written it
    carries the NaN into the logits."""
    arena = allocate(nbytes)
    arena.view(np.float32)[:] = np.nan
    return arena


@pytest.mark.parametrize("kw", [dict(), dict(t=3), dict(rows=True)], ids=str)
@pytest.mark.parametrize("late", [1, 0], ids=["late helper", "late caller"])
def test_a_thread_that_starts_late_is_waited_for(pytorch, monkeypatch, kw, late):
    """Two threads share an image; one starts its forward pass only once the other is
    waiting at its first barrier, and 0.1 s later. The logits must be PyTorch's, and the
    arena is full of NaN, so that a thread let through early cannot find the right numbers
    left there by an earlier pass."""
    loaded, logits = pytorch
    engine = Engine(loaded.weights, threads=2, **kw)
    x = np.random.default_rng(11).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    engine.forward(x)  # the plan and the compiled kernels, before the delay matters

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *rest):
        if tid == late:
            other = LINE * (1 + (1 - tid))  # the other thread's own line of the state
            end = time.monotonic() + 2.0
            while sync[other + PASSED] == 0 and time.monotonic() < end:
                time.sleep(0.001)
            time.sleep(0.1)
        real_forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *rest)
    monkeypatch.setattr(engine_module, "forward", forward)
    monkeypatch.setattr(engine, "_arena", poisoned)
    monkeypatch.setattr(engine, "_output", lambda images: np.full((images, 10), np.nan, np.float32))
    close(engine.forward(x), logits(x))


@pytest.mark.parametrize("kw", [dict(), dict(t=3), dict(rows=True)], ids=str)
def test_every_phase_ends_at_a_barrier(pytorch, monkeypatch, kw):
    """Each thread enters a barrier after every phase whose output the others read: a
    materialized block's three (expand, depthwise, project), a sliced block's two per slice
    and one at its end, one after the row pipeline and after a streamed block, and the
    head's two (before the classifier, and at the end, so that the caller returns with
    every share written). A barrier left out shows in the numbers only when a thread
    happens to be late; counted, it shows every time."""
    loaded, logits = pytorch
    engine = Engine(loaded.weights, threads=2, **kw)
    x = np.random.default_rng(12).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    states = []

    def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *rest):
        states.append(sync)
        real_forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync, *rest)
    monkeypatch.setattr(engine_module, "forward", forward)
    close(engine.forward(x), logits(x))
    plan = engine.plan(1, 2)
    want = (1 if plan.piped else 0) + 2
    for step in plan.steps[plan.piped:]:
        t = len(step.bounds) - 1
        want += 1 if step.streamed else 3 if t == 1 else 2 * t + 1
    sync = states[0]
    assert [int(sync[LINE * (1 + tid) + PASSED]) for tid in range(2)] == [want, want]
