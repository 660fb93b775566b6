"""Say so when Numba compiles, before the wait.

The first run on a CPU (or after an upgrade of the engine or of Numba) compiles the
kernels for it: tens of seconds with nothing else to show. Numba announces every
compilation it starts (and only those: a kernel loaded from its on-disk cache is not
one), so the message appears exactly when there is a wait, once.
"""
from __future__ import annotations

import contextlib
import sys

from numba.core import event

from .kernels.target import current


@contextlib.contextmanager
def announce_compilation(stream=None):
    """Within the block, print one line to `stream` (stderr) when Numba first compiles."""
    said = False

    class Listener(event.Listener):
        def on_start(self, ev):
            nonlocal said
            if not said:
                said = True
                print(f"compiling kernels for this CPU (first run only; {current().isa})...",
                      file=stream or sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    listener = Listener()
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)
