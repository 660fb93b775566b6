"""A whole forward pass in one call: every block, the head and the classifier.

The engine compiles its plan into numbers: one row of BLOCK per inverted residual and one
HEAD row, each holding where the block's tensors lie in the arena (a flat float32 array)
and where its packed weights lie in `params` (another one). `forward` walks those rows.

Why one call, and not one per block from Python: threads that share an image meet after
every phase (sync.py). Between two Python calls a thread must take the GIL back, and
waking a thread that waits for the GIL costs tens of microseconds on this kind of machine
(measured: 18 blocks on 2 threads took 1.15 ms one call per block, 0.79 ms in one call,
against 1.38 ms on one thread). Inside one nogil call the threads never touch the GIL.

Offsets and lengths count float32 elements; every field is an int64.
"""
import numpy as np
from numba import njit

from .block import inverted_residual
from .gemm import FASTMATH, PANEL, gemm
from .pipeline import pipeline
from .simd import LANES
from .pool import pointwise_avg_pool
from .sync import await_release, barrier, given_up, share

BLOCK = np.dtype([(name, np.int64) for name in (
    "x", "n", "h", "w", "cin",           # input [n, h, w, cin] at arena[x:]
    "y", "ho", "wo", "cout",             # output [n, ho, wo, cout] at arena[y:]
    "e", "e_len", "d", "d_len",          # expansion and depthwise scratch
    "stem", "exp_stride", "exp_top", "exp_bottom", "exp_left", "exp_right",
    "dw_stride", "dw_top", "dw_bottom", "dw_left", "dw_right",
    "residual", "rows",
    "piped", "x_rows", "y_rows",         # in the row pipeline (pipeline.py); rings of rows (0: whole)
    "we", "we_len", "be", "hidden", "wd", "bd", "wp", "bp",   # weights at params[...]
    "bounds", "t",                        # slice edges at ints[bounds:bounds + t + 1]
    "exp_split", "dw_split",              # two threads' learned cut of the stem's / depthwise's
                                          # rows (0: half way; written by the kernels, sync.py)
)])

HEAD = np.dtype([(name, np.int64) for name in (
    "x", "n", "pixels", "cin",           # the last block's output, [n, pixels, cin]
    "cout", "chunk", "scratch", "pooled",  # head conv: scratch [chunk, cout], pooled [n, cout]
    "hw", "hb",                           # head conv weights (panels) and bias
    "classes", "cw", "cb",                # classifier (classes = 0: headless)
)])


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def forward(arena, params, ints, blocks, head, tid, threads, sync, out, image, state,
            streamed, whole, sliced, narrow, piped):
    """Thread tid of `threads` runs its share of every layer; out [n, classes] logits.
    image [n, H, W, 3]: the caller's input, read where it is (never in the arena);
    state int64 [threads, 2, blocks]: the row pipeline's counters (pipeline.py);
    streamed, whole, sliced, narrow, piped: what the table's blocks use (modes()).
    Stops after the block where the pass was given up (sync.py): the caller raises.
    Else the threads meet at the end, and the helpers wait for the caller's release
    (sync.py): called by spread(..., joined=True)."""
    for i in range(len(blocks)):
        if given_up(sync):
            return
        _block(arena, params, ints, blocks, i, tid, threads, sync, image, state,
               streamed, whole, sliced, narrow, piped)
    if given_up(sync):
        return
    run_head(arena, params, head, tid, threads, sync, out)
    barrier(sync, tid, threads)  # when the caller returns, every share is written
    await_release(sync, tid)     # helpers return once the caller has the GIL (sync.py)


def modes(blocks: np.ndarray, ints: np.ndarray) -> tuple:
    """(streamed, whole, sliced, narrow, piped) for forward and run_block: True where some
    block of the table is evaluated that way (narrow: has a slice whose width is not a
    multiple of 16, run by pairs.py or, at 8, the two-pixel depthwise; piped: in the row
    pipeline), None where none is. None is a type of its own to Numba, so the code of
    what is None is not compiled at all: a first forward compiles only what its engine
    uses (t = 1 alone: 40% less; the pipeline only for rows=True)."""
    piped = blocks["piped"] != 0
    rows, t = (blocks["rows"] != 0) & ~piped, blocks["t"]
    narrow = any((np.diff(ints[b["bounds"]:b["bounds"] + b["t"] + 1]) % LANES != 0).any() for b in blocks)
    alone = ~rows & ~piped
    used = (rows.any(), (alone & (t == 1)).any(), (alone & (t > 1)).any(), narrow, piped.any())
    return tuple(True if u else None for u in used)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def run_block(arena, params, ints, blocks, i, tid, threads, sync, image, state,
              streamed, whole, sliced, narrow, piped):
    """Block i, or, for the first block of the row pipeline, every block of it (the
    pipeline's other blocks then have nothing left to do): forward's step, on its own
    (Engine.intermediates)."""
    _block(arena, params, ints, blocks, i, tid, threads, sync, image, state,
           streamed, whole, sliced, narrow, piped)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _block(arena, params, ints, blocks, i, tid, threads, sync, image, state,
           streamed, whole, sliced, narrow, piped):
    """run_block, inlined into forward: as a call, it was one more level whose compile
    linked, optimized and emitted all of the kernels' code again (1.8 s of a cold first
    forward)."""
    b = blocks[i]
    if b.piped != 0:
        if piped is None:  # not compiled (the type of None tells)
            raise ValueError("the row pipeline was left out of the compiled code")
        if i == 0:
            pipeline(arena, params, ints, blocks, image, state, tid, threads, narrow, None)
            barrier(sync, tid, threads)  # the next block reads all of the pipeline's output
        return
    x = image if b.stem != 0 else arena[b.x:b.x + b.n * b.h * b.w * b.cin].reshape((b.n, b.h, b.w, b.cin))
    y = arena[b.y:b.y + b.n * b.ho * b.wo * b.cout].reshape((b.n, b.ho, b.wo, b.cout))
    panels = -(-b.cout // PANEL)
    wp = params[b.wp:b.wp + panels * b.hidden * PANEL].reshape((panels, b.hidden, PANEL))
    inverted_residual(x, b.stem != 0, params[b.we:b.we + b.we_len], params[b.be:b.be + b.hidden],
                      b.exp_stride, (b.exp_top, b.exp_bottom, b.exp_left, b.exp_right),
                      params[b.wd:b.wd + 9 * b.hidden], params[b.bd:b.bd + b.hidden],
                      b.dw_stride, (b.dw_top, b.dw_bottom, b.dw_left, b.dw_right),
                      wp, params[b.bp:b.bp + b.cout], ints[b.bounds:b.bounds + b.t + 1],
                      b.residual != 0, b.rows != 0, arena[b.e:b.e + b.e_len], arena[b.d:b.d + b.d_len],
                      y, tid, threads, sync, b, streamed, whole, sliced, narrow)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def run_head(arena, params, head, tid, threads, sync, out):
    """The last 1x1 conv with the average pool, then the classifier. Each thread computes
    a share of the output channels (whole weight panels), so neither needs the other's
    partial sums; the classifier reads all pooled channels, so the threads meet first."""
    h = head[0]
    x = arena[h.x:h.x + h.n * h.pixels * h.cin].reshape((h.n, h.pixels, h.cin))
    pooled = arena[h.pooled:h.pooled + h.n * h.cout].reshape((h.n, h.cout))
    panels = -(-h.cout // PANEL)
    q0, q1 = share(panels, tid, threads)
    c0, c1 = q0 * PANEL, min(q1 * PANEL, h.cout)
    if c1 > c0:
        w = params[h.hw:h.hw + panels * h.cin * PANEL].reshape((panels, h.cin, PANEL))[q0:q1]
        scratch = arena[h.scratch + h.chunk * c0:h.scratch + h.chunk * c1].reshape((h.chunk, c1 - c0))
        pointwise_avg_pool(x, w, params[h.hb + c0:h.hb + c1], 0.0, 6.0, scratch, pooled[:, c0:c1])
    if h.classes == 0:
        return
    barrier(sync, tid, threads)
    panels = -(-h.classes // PANEL)
    q0, q1 = share(panels, tid, threads)
    c0, c1 = q0 * PANEL, min(q1 * PANEL, h.classes)
    if c1 > c0:
        w = params[h.cw:h.cw + panels * h.cout * PANEL].reshape((panels, h.cout, PANEL))[q0:q1]
        gemm(pooled, w, params[h.cb + c0:h.cb + c1], False, -np.inf, np.inf, out[:, c0:c1])
