"""Keep a helper thread off the core of the thread it helps.

Threads that share an image wait for each other at barriers that spin (kernels/sync.py),
so they must run on different cores. Linux wakes a thread on the core of the thread
that woke it (measured: 29 of 30 wake-ups of the helper landed on the caller's core), and
two spinning threads on one core take turns by time slice until the scheduler moves one:
a forward on 2 threads took 11 ms instead of 3. So each helper, before it starts, leaves
the caller's core (its own affinity only; the caller's is never touched).
Where the platform can't tell the current core, helpers run wherever they are put.

This is only for speed, so it never raises: where the affinity calls fail (EINVAL when
a container's cpuset changes under the process, EPERM under a seccomp policy), the
helper runs where it is.
"""
from __future__ import annotations

import ctypes
import os
import threading

try:
    _sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
    _sched_getcpu.restype = ctypes.c_int
    _sched_getcpu.argtypes = []
except (OSError, AttributeError):
    _sched_getcpu = None

_CAN_PIN = _sched_getcpu is not None and hasattr(os, "sched_setaffinity")
_avoided = threading.local()  # the core this helper thread last moved off


def current_cpu() -> int:
    """The core the calling thread runs on now, or -1 where unknown."""
    return _sched_getcpu() if _CAN_PIN else -1


def leave(cpu: int) -> None:
    """Move the calling (helper) thread off core `cpu` if it can be; best effort."""
    if cpu < 0 or getattr(_avoided, "cpu", None) == cpu:
        return
    try:
        allowed = os.sched_getaffinity(0) | getattr(_avoided, "allowed", set())
        _avoided.allowed = allowed
        if len(allowed) > 1 and cpu in allowed:
            os.sched_setaffinity(0, allowed - {cpu})
        _avoided.cpu = cpu
    except Exception:  # noqa: BLE001 -- an optimisation only: see the module's docstring
        pass
