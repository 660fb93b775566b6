"""A spin barrier for the threads that share one forward pass.

Threads working on one image meet after every phase of a block (expand, depthwise,
project), a few dozen times per forward: a barrier must cost a microsecond, not the tens
of microseconds of waking a thread that sleeps on a lock. So the threads spin, inside
the nogil kernels, on one shared counter in a small int64 array (`new_sync`):

    sync[0]                 how many threads have arrived, over all barriers so far
    sync[8 * (1 + tid)]     how many barriers thread tid has passed (its own cache line)

Barrier number k (counted per thread) is passed once the counter reaches k * threads.
The counter only grows, so no thread can be released by an earlier or later barrier.
A waiting thread gives up its core (sched_yield) every SPINS_BEFORE_YIELD spins (a few
microseconds), so more threads than cores still make progress, and a helper woken on
its caller's core lets the caller run.
"""
import platform

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
SPINS_BEFORE_YIELD = 100
LINE = 8  # int64 per 64-byte cache line


def new_sync(threads: int) -> np.ndarray:
    """The zeroed shared state of one forward pass run by `threads` threads."""
    return np.zeros(LINE * (1 + threads), np.int64)


def _slot_pointer(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [index])


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """arr[index] += value as one atomic read-modify-write (sequentially consistent)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_pointer(context, builder, sig.args[0], args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.atomic_rmw("add", ptr, v, "seq_cst")
        return context.get_dummy_value()
    return types.none(arr, types.intp, value), codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr[index], read atomically (acquire): never hoisted out of a loop."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 `pause`); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _sched_yield(typingctx):
    """libc's sched_yield(): let another runnable thread have this core."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@njit(cache=True, nogil=True, _nrt=False)
def barrier(sync, tid, threads):
    """Wait until all `threads` threads have called their next barrier. One thread: no-op."""
    if threads == 1:
        return
    mine = LINE * (1 + tid)
    passed = sync[mine] + 1
    sync[mine] = passed
    atomic_add(sync, 0, 1)
    spins = 0
    while atomic_load(sync, 0) < passed * threads:
        _pause()
        spins += 1
        if spins == SPINS_BEFORE_YIELD:
            _sched_yield()
            spins = 0


@njit(cache=True)
def share(n, tid, threads):
    """Thread tid's part [lo, hi) of range(n) cut into `threads` near-equal parts."""
    return n * tid // threads, n * (tid + 1) // threads
