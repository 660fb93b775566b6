"""The learned two-thread cut (sync.balance_barrier) on its own: two threads end a phase at
times the test sets, and the cut moves toward the thread that finished first, halfway to
where both would have finished together, by at most an eighth of the rows."""
import threading
import time

import pytest

from mnv2engine.kernels.sync import BEGAN, ENDED, LINE, balance_barrier, new_sync


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile balance_barrier before any phase is timed (one thread: no wait)."""
    balance_barrier(new_sync(1), 0, 1, time.monotonic_ns(), 0, 10)


def _phase(n, cut, delays):
    """Both threads call balance_barrier for a phase of n rows cut at `cut`, both having
    begun at the same moment, thread i after delays[i] seconds. On a loaded machine a
    thread may start late; a phase whose recorded ends are not at least half the delays'
    difference apart, in the intended order, is run again.
    Returns (thread 0's new cut, thread 1's, the sync array)."""
    gap = (delays[0] - delays[1]) * 1e9
    for _ in range(20):
        new0, new1, sync = _one_phase(n, cut, delays)
        ended = sync[LINE * 1 + ENDED] - sync[LINE * 2 + ENDED]
        if ended * gap > 0 and abs(ended) >= abs(gap) / 2:
            break
    return new0, new1, sync


def _one_phase(n, cut, delays):
    sync = new_sync(2)
    began = time.monotonic_ns()  # CLOCK_MONOTONIC, as sync.now_ns
    out = [None, None]

    def run(tid):
        time.sleep(delays[tid])
        out[tid] = balance_barrier(sync, tid, 2, began, cut, n)
    threads = [threading.Thread(target=run, args=(tid,)) for tid in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "balance_barrier never returned"
    return out[0], out[1], sync


def _expected(n, cut, sync):
    """Where the cut goes, by the rule in its documentation: each thread's time per row,
    the cut at which both would have ended together, half of that move, capped at n // 8."""
    cap = max(n // 8, 1)
    return cut + max(-cap, min(cap, _move(n, cut, sync)))


def _move(n, cut, sync):
    """The rule's move before the cap."""
    t0 = sync[LINE * 1 + ENDED] - sync[LINE * 1 + BEGAN]
    t1 = sync[LINE * 2 + ENDED] - sync[LINE * 2 + BEGAN]
    rate0, rate1 = t0 / cut, t1 / (n - cut)  # ns per row
    together = (t1 + rate1 * cut - t0 + rate0 * cut) / (rate0 + rate1)  # t0 + r0 (c' - c) = t1 + r1 (c - c')
    return (together - cut) / 2


def _past_the_cap(n, cut, delays):
    """Thread 0's new cut after a phase whose recorded times call for a move past the cap.
    The late thread is late by far more than its share takes; on a loaded machine the
    other can be late too, and such a phase is run again."""
    c = cut or n // 2  # 0: not learned yet, so the phase is cut half way
    for _ in range(20):
        new0, _, sync = _phase(n, cut, delays)
        if abs(_move(n, c, sync)) > n // 8 + 1:
            break
    return new0


# The delays differ by 10-30 ms, far above scheduling jitter: the late thread is known.
@pytest.mark.parametrize("delays", [(0.04, 0.03), (0.03, 0.04), (0.03, 0.0), (0.0, 0.03)], ids=str)
@pytest.mark.parametrize("n,cut", [(1000, 500), (64, 40), (40000, 30000)])
def test_the_cut_moves_toward_the_thread_that_finished_first(n, cut, delays):
    new0, new1, sync = _phase(n, cut, delays)
    assert new1 == cut, "only thread 0 learns the cut"
    want = _expected(n, cut, sync)
    assert abs(new0 - want) <= 1, f"cut {cut} -> {new0}, expected {want:.1f}"
    if delays[0] > delays[1]:
        assert new0 < cut, "thread 0 was late: it must get fewer rows"
    else:
        assert new0 > cut, "thread 1 was late: thread 0 must get more rows"


def test_the_cut_moves_no_further_than_an_eighth_of_the_rows():
    n, cut = 800, 400
    assert _past_the_cap(n, cut, (0.03, 0.0)) == cut - n // 8  # thread 0 late by far more than its phase
    assert _past_the_cap(n, cut, (0.0, 0.03)) == cut + n // 8


@pytest.mark.parametrize("n,cut,delays", [(16, 1, (0.0, 0.03)), (16, 15, (0.03, 0.0)), (2, 1, (0.03, 0.0))])
def test_the_cut_stays_inside_the_rows(n, cut, delays):
    """The rule's move would pass an end (by the cap, or, at n = 2, by one row): the cut
    stops one row short of it, so that each thread keeps a row."""
    new0, _, sync = _phase(n, cut, delays)
    assert 1 <= new0 <= n - 1
    assert abs(new0 - min(max(_expected(n, cut, sync), 1), n - 1)) <= 1


def test_an_unlearned_cut_starts_half_way():
    n = 100
    assert _past_the_cap(n, 0, (0.0, 0.03)) == n // 2 + n // 8  # 0: not learned yet, cut at n // 2
