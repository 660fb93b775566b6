"""Run one call on the calling thread and the others on the engine's helpers, such that
a failure anywhere never hangs the caller and never leaves a helper busy.

Threads that share an image wait for each other at spin barriers, inside nogil kernels
where neither Ctrl-C nor an exception can reach them (kernels/sync.py). A thread that
fails before its kernel, or between two of them, would leave the others spinning
forever. So every failure, on a helper or on the caller, gives the pass up in the shared
state `sync`: the waiting threads leave at their next spin, the caller waits for every
helper to return (so the engine's helpers are free for the next call), then raises.
"""
from __future__ import annotations

from concurrent import futures

from . import affinity
from .errors import EngineError
from .kernels.sync import PATIENCE_NS, RUNNING, STALLED, STATE, give_up, release


def spread(pool, fn, calls, sync, joined: bool = False):
    """fn(*args) for every args of calls, the first on this thread and the others on
    `pool`'s threads, each moved off this thread's core first (affinity.py); the results
    in order. A failure is raised as an EngineError naming it (Ctrl-C stays a
    KeyboardInterrupt), after every call has returned.

    joined=True: fn is network.forward, whose threads meet at its end and whose helpers
    then wait for this thread's release (sync.py). Once this thread's call returns with
    the pass still running, every thread's work is done: the helpers are released and
    not waited for (what is left of them is returning); nothing is returned."""
    cpu = affinity.current_cpu()
    helpers = []
    try:
        for args in calls[1:]:
            helpers.append(pool.submit(_helper, sync, cpu, fn, args))
        first = fn(*calls[0])
        if joined:
            release(sync)
            if sync[STATE] == RUNNING:
                return None
        futures.wait(helpers)
    except BaseException as e:
        give_up(sync)
        futures.wait(helpers)  # they leave at their next barrier, or between sub-batches
        _raise(e, "the calling thread")
    for h in helpers:
        if h.exception() is not None:
            _raise(h.exception(), "a helper thread")
    if sync[STATE] == STALLED:
        raise EngineError(f"threads sharing an image saw no progress for {sync[PATIENCE_NS] / 1e9:g} s at a barrier "
                          "and gave the forward pass up (was a thread stopped?); the engine is usable")
    return [first] + [h.result() for h in helpers]


def _helper(sync, cpu, fn, args):
    """On a helper thread: leave the caller's core (best effort), then fn(*args). If
    anything fails, the pass is given up, so that no thread waits for this one."""
    try:
        affinity.leave(cpu)
        return fn(*args)
    except BaseException:
        give_up(sync)
        raise


def _raise(e: BaseException, who: str):
    """Raise e on the caller: EngineErrors, Ctrl-C and exits as they are, anything else
    as an EngineError that names it."""
    if isinstance(e, EngineError) or not isinstance(e, Exception):
        raise e
    raise EngineError(f"{who} of a forward call failed ({type(e).__name__}: {e}); "
                      "the call was abandoned and the engine is usable") from e
