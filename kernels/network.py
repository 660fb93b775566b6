"""A whole forward pass in one call: every block, the head and the classifier.

The engine compiles its plan into numbers (mnv2engine/program.py): one record per
inverted residual and one for the head, each holding where the block's tensors lie in
the arena (a flat float32 array) and where its packed weights lie in `params` (another
one). `forward` walks those records.

Why one call, and not one per block from Python: threads that share an image meet after
every phase (sync.py). Between two Python calls a thread must take the GIL back, and
waking a thread that waits for the GIL costs tens of microseconds on this kind of machine
(18 blocks on 2 threads: 1.15 ms one call per block, 0.79 ms in one call). Inside one
nogil call the threads never touch the GIL.
"""
from numba import njit

from .block import inverted_residual
from .epilogue import LINEAR, RELU6
from .gemm import FASTMATH, PANEL, gemm
from .geometry import panels
from .modes import PIPED
from .pipeline import pipeline
from .pool import pointwise_avg_pool
from .sync import await_release, barrier, given_up, share


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def forward(arena, params, ints, blocks, head, cuts, state, image, out, tid, threads, sync,
            materialized, sliced, streamed, piped, narrow):
    """Thread tid of `threads` runs its share of every layer; out [n, classes] logits.

    blocks, head    the plan's records; cuts, the blocks' learned cuts (block.py)
    state           int64 [threads, 2, blocks]: the row pipeline's counters (pipeline.py)
    image           [n, H, W, 3]: the caller's input, read where it is (never in the arena)
    materialized, sliced, streamed, piped, narrow: the code compiled (modes.Compiled)

    Stops after the block where the pass was given up (sync.py): the caller raises.
    Else the threads meet at the end, and the helpers wait for the caller's release
    (sync.py): called by spread(..., joined=True)."""
    for i in range(len(blocks)):
        if given_up(sync):
            return
        _block(arena, params, ints, blocks, cuts, state, image, i, tid, threads, sync,
               materialized, sliced, streamed, piped, narrow)
    if given_up(sync):
        return
    run_head(arena, params, head, tid, threads, sync, out)
    barrier(sync, tid, threads)  # when the caller returns, every share is written
    await_release(sync, tid)     # helpers return once the caller has the GIL (sync.py)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def run_block(arena, params, ints, blocks, cuts, state, image, i, tid, threads, sync,
              materialized, sliced, streamed, piped, narrow):
    """Block i, or, for the first block of the row pipeline, every block of it (the
    pipeline's other blocks then have nothing left to do): forward's step, on its own
    (Engine.intermediates)."""
    _block(arena, params, ints, blocks, cuts, state, image, i, tid, threads, sync,
           materialized, sliced, streamed, piped, narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _block(arena, params, ints, blocks, cuts, state, image, i, tid, threads, sync,
           materialized, sliced, streamed, piped, narrow):
    """run_block, inlined into forward: as a call, it was one more level whose compile
    linked, optimized and emitted all of the kernels' code again (1.8 s of a cold first
    forward)."""
    if blocks[i].mode != PIPED:
        inverted_residual(arena, params, ints, blocks, i, image, cuts, tid, threads, sync,
                          materialized, sliced, streamed, narrow)
    elif i == 0:
        if piped is None:
            raise ValueError("the row pipeline was left out of the compiled code")
        pipeline(arena, params, ints, blocks, image, state, tid, threads, narrow, None)
        barrier(sync, tid, threads)  # the next block reads all of the pipeline's output


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def run_head(arena, params, head, tid, threads, sync, out):
    """The last 1x1 conv with the average pool, then the classifier. Each thread computes
    a share of the output channels (whole weight panels), so neither needs the other's
    partial sums; the classifier reads all pooled channels, so the threads meet first."""
    h = head[0]
    x = arena[h.x:h.x + h.n * h.pixels * h.cin].reshape((h.n, h.pixels, h.cin))
    pooled = arena[h.pooled:h.pooled + h.n * h.cout].reshape((h.n, h.cout))
    q0, q1 = share(-(-h.cout // PANEL), tid, threads)
    c0, c1 = q0 * PANEL, min(q1 * PANEL, h.cout)
    if c1 > c0:
        w = panels(params, h.hw, h.cin, h.cout)[q0:q1]
        scratch = arena[h.scratch + h.chunk * c0:h.scratch + h.chunk * c1].reshape((h.chunk, c1 - c0))
        pointwise_avg_pool(x, w, params[h.hb + c0:h.hb + c1], RELU6[0], RELU6[1], scratch, pooled[:, c0:c1])
    if h.classes == 0:
        return
    barrier(sync, tid, threads)
    q0, q1 = share(-(-h.classes // PANEL), tid, threads)
    c0, c1 = q0 * PANEL, min(q1 * PANEL, h.classes)
    if c1 > c0:
        w = panels(params, h.cw, h.cout, h.classes)[q0:q1]
        gemm(pooled, w, params[h.cb + c0:h.cb + c1], False, LINEAR[0], LINEAR[1], out[:, c0:c1])
