"""A spin barrier for the threads that share one forward pass.

Threads working on one image meet after every phase of a block (expand, depthwise,
project), a few dozen times per forward: a barrier must cost a microsecond, not the tens
of microseconds of waking a thread that sleeps on a lock. So the threads spin, inside
the nogil kernels, on one shared counter in a small int64 array (`new_sync`):

    sync[0]                 how many threads have arrived, over all barriers so far
    sync[1]                 RUNNING, or why the pass was given up: FAILED, STALLED
    sync[2]                 the patience: nanoseconds without progress before STALLED
    sync[3]                 1 once the caller has its result back in Python (release)
    sync[8 * (1 + tid)]     how many barriers thread tid has passed (its own cache line)
    sync[8 * (1 + tid) + 1] when thread tid began its last balanced phase; + 2, ended it

Barrier number k (counted per thread) is passed once the counter reaches k * threads.
The counter only grows, so no thread can be released by an earlier or later barrier.
A waiting thread gives up its core (sched_yield) every SPINS_BEFORE_YIELD spins (a few
microseconds), so more threads than cores still make progress, and a helper woken on
its caller's core lets the caller run.

A pass can be given up. A thread that fails (an exception before or between its
kernels, on the caller or on a helper) would leave the others spinning forever, without
the GIL, where not even Ctrl-C reaches them; so the engine marks the pass FAILED
(`give_up`), and every waiting thread leaves at its next spin. The state shares the
counter's cache line, so checking it costs the spin nothing. As a last defence, a
thread that has seen the counter stand still for the patience (PATIENCE seconds; a
phase takes milliseconds) marks the pass STALLED and leaves. After either, the threads
run the rest of their current block without waiting (its numbers are garbage, in the
pass's own arena), the network stops at the block's end (network.py), and the engine
raises.

Balanced phases. Two halves of a phase need not take the same time (the helper starts
some 20 us after the caller; some rows read slower than others; a hybrid CPU's cores
differ). So where two threads cut the rows of a phase in two (`balanced_share`: the
stem, and each depthwise of a materialized block), the cut is learned: at the phase's
barrier (`balance_barrier`), thread 0 compares when the two finished and moves the cut
halfway to where they would have finished together, for the next pass of the same plan
(the cuts live beside its records: program.Program.cuts). Any cut gives the same results, bit for bit:
each row is computed once, alone, in the same way.

The end of a pass. The threads meet after the classifier, so the caller knows every
share is written as soon as it returns. Left at that, all threads would leave their
nogil kernels at once and queue for the GIL, the caller often behind a helper's Python
epilogue. So the helpers wait, still spinning without the GIL,
until the caller has returned to Python and says so (`release`); only then do they
return, and their epilogue runs while the caller's next kernel has let go of the GIL.

Memory ordering. A phase's outputs are plain stores, made visible to the threads after
the barrier by one release/acquire pair on the counter: each thread's `atomic_add` of
ARRIVED is a sequentially consistent read-modify-write, hence a release (every load and
store of the thread before it, its share of the phase and its PASSED, BEGAN and ENDED
slots, is ordered before it), and a waiting thread leaves only once its `atomic_load` of
ARRIVED, an acquire, reads k * threads or more, which the last arrival's add or a later
one wrote. The adds on one location form a release sequence, so that load synchronizes
with every thread's add of barrier k: whatever any thread did before the barrier happens
before whatever any thread does after it, in both directions (a buffer read before is
safe to overwrite after). That is the C++ memory model's rule, which LLVM's orderings
follow, so it holds on weakly-ordered CPUs too (AArch64: LDADDAL, or an LDAXR/STLXR loop,
for the add, LDAR for the load), not only on x86, which orders every store anyway (and
QEMU keeps x86's order when it runs ARM code there: an emulated run does not test this).
The flags are plain stores: STATE = FAILED (give_up, from Python) or STALLED (a waiting
thread), RELEASED = 1 (release, from Python). They publish nothing: a thread that sees
one only leaves its wait, reading nothing written before the flag (after RELEASED a
helper only returns to Python, whose hand-over to the caller goes through locks). So
they need no ordering, only to be seen: an aligned 8-byte store is single-copy atomic on
x86-64 and AArch64, and the waits read the flags with atomic loads, which the compiler
neither hoists out of the loop nor merges, so coherence brings them the store. (give_up's
check-then-write can race with a STALLED: either value gives the pass up.)
"""
import platform
import time

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_MACHINE = platform.machine().lower()
_X86 = _MACHINE in ("x86_64", "amd64", "i686", "x86")
_ARM64 = _MACHINE in ("aarch64", "arm64")
ISB_SY = 15  # the option of `isb sy`, the full-system instruction barrier
SPINS_BEFORE_YIELD = 100
LINE = 8  # int64 per 64-byte cache line
ARRIVED, STATE, PATIENCE_NS, RELEASED = 0, 1, 2, 3  # slots of the first line
PASSED, BEGAN, ENDED = 0, 1, 2  # slots of a thread's own line
RUNNING, FAILED, STALLED = 0, 1, 2     # values of sync[STATE]
# seconds without progress before a waiting thread gives the pass up: far above any
# phase (milliseconds at 224; a 2048 x 2048 image's largest phase takes seconds)
PATIENCE = 30.0
_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC


def new_sync(threads: int) -> np.ndarray:
    """The shared state of one forward pass run by `threads` threads: RUNNING, none arrived."""
    sync = np.zeros(LINE * (1 + threads), np.int64)
    sync[PATIENCE_NS] = int(PATIENCE * 1e9)
    return sync


def release(sync: np.ndarray) -> None:
    """The caller is back in Python with its result: helpers waiting in
    await_release return."""
    sync[RELEASED] = 1


def give_up(sync: np.ndarray) -> None:
    """Mark the pass FAILED (unless it already stalled): waiting threads leave."""
    if sync[STATE] == RUNNING:
        sync[STATE] = FAILED


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
    """The spin-wait hint: x86 `pause`; aarch64 `isb sy`, as Rust's spin_loop gives it
    (`yield`, the other candidate, is a nop on ARM cores without SMT, nearly all of them;
    `isb` holds the core until its pipeline drains, a short wait like `pause`'s, so that
    SPINS_BEFORE_YIELD spins take a similar time); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _ARM64:
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i32]),
                                                "llvm.aarch64.isb")
            builder.call(fn, [ir.Constant(i32, ISB_SY)])
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


@intrinsic
def now_ns(typingctx):
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds (a 64-bit timespec: two int64)."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), timespec.as_pointer()]),
            "clock_gettime")
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(fn, [ir.Constant(ir.IntType(32), _CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)
    return types.int64(), codegen


@njit(cache=True, nogil=True, _nrt=False)
def barrier(sync, tid, threads):
    """Wait until all `threads` threads have called their next barrier, or the pass is
    given up (see the module's docstring). One thread: no-op."""
    if threads == 1:
        return
    mine = LINE * (1 + tid)
    passed = sync[mine + PASSED] + 1
    sync[mine + PASSED] = passed
    atomic_add(sync, ARRIVED, 1)
    _wait_for(sync, ARRIVED, passed * threads)


@njit(cache=True, nogil=True, _nrt=False)
def await_release(sync, tid):
    """A helper (tid > 0) waits until the caller has released the pass, or the pass
    was given up (see the module's docstring). The caller returns at once."""
    if tid > 0:
        _wait_for(sync, RELEASED, 1)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _wait_for(sync, slot, target):
    """Spin until sync[slot] >= target or the pass is given up, yielding the core every
    SPINS_BEFORE_YIELD spins; after the patience without sync[slot] changing, mark the
    pass STALLED and leave."""
    spins = 0
    seen, since = -1, 0  # the value last seen, and when it was first seen
    while True:
        value = atomic_load(sync, slot)
        if value >= target or atomic_load(sync, STATE) != RUNNING:
            return
        _pause()
        spins += 1
        if spins == SPINS_BEFORE_YIELD:
            _sched_yield()
            spins = 0
            now = now_ns()
            if value != seen:
                seen, since = value, now
            elif now - since > sync[PATIENCE_NS]:
                sync[STATE] = STALLED
                return


@njit(cache=True, nogil=True, _nrt=False)
def given_up(sync):
    """Whether the pass was given up: the threads stop at the end of the block."""
    return atomic_load(sync, STATE) != RUNNING


@njit(cache=True, nogil=True, _nrt=False)
def _cut(cut, n):
    """Where thread 1's rows begin: `cut` as learned, or half way (0: not learned yet)."""
    return cut if 0 < cut < n else n // 2


@njit(cache=True, nogil=True, _nrt=False)
def balanced_share(cut, n, tid, threads):
    """Thread tid's part [lo, hi) of range(n): as share(), except that two threads cut
    it where the last pass learned (`cut`, 0 for half way; see the module's docstring)."""
    if threads != 2 or n < 2:
        return share(n, tid, threads)
    c = _cut(cut, n)
    return (0, c) if tid == 0 else (c, n)


@njit(cache=True, nogil=True, _nrt=False)
def balance_barrier(sync, tid, threads, began, cut, n):
    """The barrier that ends a phase of balanced_share(cut, n, ...) that this thread
    began at `began` (now_ns). Returns the cut for the next pass: thread 0 moves it
    halfway to where both threads would have ended together, given each one's time per
    row, by at most an eighth of the rows; the others return it unchanged (only thread
    0 may store it)."""
    if threads != 2 or n < 2:
        barrier(sync, tid, threads)
        return cut
    mine = LINE * (1 + tid)
    sync[mine + BEGAN] = began
    sync[mine + ENDED] = now_ns()
    barrier(sync, tid, threads)
    if tid != 0:
        return cut
    c, other = _cut(cut, n), LINE * 2
    per_row = ((sync[mine + ENDED] - began) / c
               + (sync[other + ENDED] - sync[other + BEGAN]) / (n - c))
    rows = 0.5 * (sync[mine + ENDED] - sync[other + ENDED]) / max(per_row, 1.0)
    most = max(n // 8, 1)  # one late wake-up must not hand a whole phase to one thread
    step = min(max(int(np.floor(rows + 0.5)), -most), most)
    return min(max(c - step, 1), n - 1)


@njit(cache=True)
def share(n, tid, threads):
    """Thread tid's part [lo, hi) of range(n) cut into `threads` near-equal parts."""
    return n * tid // threads, n * (tid + 1) // threads
