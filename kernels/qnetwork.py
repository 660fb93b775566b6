"""A whole integer forward pass in one call, as network.py is for float: every block, the
head conv, the pool and the classifier of one image.

One nogil call instead of some sixty from Python, and threads that share the image: each
takes its share of every layer's pixels (the 1x1 convs, the ADDs) or output rows (the
stem, the depthwise) and the threads meet at sync.py's barrier after each phase. Any
share gives the same bytes: every output is computed once, alone, in the same way.

The blocks come as qblock.py's records, one per block, MODE saying how each runs:
materialized and sliced blocks are shared; the row pipeline (piped) and row-streamed
blocks run on thread 0 while the others wait.

    head    int64 [HEAD_FIELDS]: where the head conv's input, output and the pooled
            features lie in the arena, and its sizes
    layers  (head conv, classifier), pointwise layers as qblock.py's `expands`
    pool    (mean, x_zero, mult, shift, y_zero): MEAN with its integers (int8 files), or
            AVERAGE_POOL_2D's uint8 rounding (mean = 0)
"""
from numba import njit

from .modes import STREAMED
from .qblock import (CIN, COUT, DW_LEFT, DW_STRIDE, DW_TOP, EDGES, EXP_LEFT, EXP_STRIDE, EXP_TOP, HE, HO, INT8_HI,
                     INT8_LO, MODE, RESIDUAL, SLICE0, STEM, SUMS, WE, WO, D, E, H, T, W, X, Y, qstreamed)
from .qconv import qconv3x3_row
from .qdepthwise import qdepthwise_row
from .qgemm import qpointwise, qpointwise_acc
from .qops import qadd, qaverage, qmean, qrequantize
from .qpipeline import qpipeline
from .sync import barrier, given_up, share

# The head's record: the last block's output (X), the head conv's output (CONV: all its
# pixels), the pooled features (POOLED): bytes into the arena.
HEAD_X, HEAD_PIXELS, HEAD_CIN, HEAD_COUT, HEAD_CONV, HEAD_POOLED, HEAD_CLASSES, HEAD_FIELDS = range(8)


@njit(cache=True, nogil=True)
def qforward(arena, sums, recs, piped, edges, stems, expands, dws, projects, adds, head, layers, pool, image,
             out, state, tid, threads, sync, sliced, rowed):
    """Thread tid of `threads` runs its share of every layer of one image [H, W, 3]
    (int8, the kernels' domain) into out int8 [width]: the logits, or the pooled
    features of a headless model (HEAD_CLASSES = 0). Stops after the block where the
    pass was given up (sync.py): the caller raises.

    sliced, rowed: True where some block is sliced, or runs piped or streamed; None
    leaves that code out at compile time, as modes.Compiled does: a materialized engine
    compiles neither qpointwise_acc nor the row kernels."""
    if piped > 0:
        if rowed is None:
            raise ValueError("the row kernels were left out of the compiled code")
        if tid == 0:
            qpipeline(arena, sums, recs, piped, edges, stems, expands, dws, projects, adds, image, state)
        barrier(sync, tid, threads)
    for i in range(piped, recs.shape[0]):
        if given_up(sync):
            return
        rec = recs[i]
        x = image if rec[STEM] != 0 else _tensor(arena, rec[X], rec[H], rec[W], rec[CIN])
        y = _tensor(arena, rec[Y], rec[HO], rec[WO], rec[COUT])
        if rec[MODE] == STREAMED:
            if rowed is None:
                raise ValueError("the row kernels were left out of the compiled code")
            if tid == 0:
                qstreamed(arena, sums, rec, edges, stems, expands, dws, projects, adds[i], image, x, y)
        else:
            _shared_block(arena, sums, rec, edges, stems, expands, dws, projects, adds[i], x, y, tid, threads,
                          sync, sliced)
        barrier(sync, tid, threads)
    if given_up(sync):
        return
    _head(arena, head, layers, pool, out, tid, threads, sync)


@njit(cache=True, inline="always")  # returns a view: inlined, so no kernel returns one
def _tensor(arena, at, h, w, c):
    return arena[at:at + h * w * c].reshape((h, w, c))


@njit(cache=True, inline="always")  # inlined: as a call, its compile would optimize every kernel's code again
def _shared_block(arena, sums, rec, edges, stems, expands, dws, projects, add, x, y, tid, threads, sync, sliced):
    """A materialized or sliced block: per slice, its expansion E and depthwise D whole
    (a slice's channels), then its share of the projection, into y or added into the
    int32 sums (sliced: requantized after the last slice); then the residual."""
    t, cout = rec[T], rec[COUT]
    pixels = rec[HO] * rec[WO]
    p0, p1 = share(pixels, tid, threads)
    x2 = x.reshape((-1, x.shape[2]))
    y2 = y.reshape((pixels, cout))
    acc = sums[max(rec[SUMS], 0):max(rec[SUMS], 0) + (pixels * cout if t > 1 else 0)].reshape((-1, cout))
    acc[p0:p1] = 0  # none when t = 1: acc has no rows
    for s in range(t):
        c0, c1 = edges[rec[EDGES] + s], edges[rec[EDGES] + s + 1]
        cs = c1 - c0
        e = _tensor(arena, rec[E], rec[HE], rec[WE], cs)
        d = _tensor(arena, rec[D], rec[HO], rec[WO], cs)
        if rec[STEM] != 0:
            wc, bias, mult, shift, xz, yz, lo, hi = stems[s]
            r0, r1 = share(rec[HE], tid, threads)
            for r in range(r0, r1):
                qconv3x3_row(x, r, wc, bias, mult, shift, xz, yz, lo, hi, rec[EXP_STRIDE], rec[EXP_TOP],
                             rec[EXP_LEFT], e[r])
        else:
            packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = expands[rec[SLICE0] + s]
            q0, q1 = share(x2.shape[0], tid, threads)
            if q1 > q0:
                qpointwise(x2[q0:q1], packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi,
                           e.reshape((-1, cs))[q0:q1])
        barrier(sync, tid, threads)  # the depthwise reads its neighbours' rows
        wc, bias, mult, shift, xz, yz, lo, hi = dws[rec[SLICE0] + s]
        r0, r1 = share(rec[HO], tid, threads)
        for r in range(r0, r1):
            qdepthwise_row(e, rec[HE], r, wc, bias, mult, shift, xz, yz, lo, hi, rec[DW_STRIDE], rec[DW_TOP],
                           rec[DW_LEFT], d[r])
        barrier(sync, tid, threads)  # the projection reads every row's pixels
        if p1 > p0:
            d2 = d.reshape((pixels, cs))[p0:p1]
            packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = projects[rec[SLICE0] + s]
            if t == 1:
                qpointwise(d2, packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, y2[p0:p1])
            elif sliced is None:
                raise ValueError("the sliced evaluation was left out of the compiled code")
            else:
                qpointwise_acc(d2, packed, colsum, xz, wz, acc[p0:p1])
                if s == t - 1:
                    qrequantize(acc[p0:p1], bias, mult, shift, yz, lo, hi, y2[p0:p1])
    if rec[RESIDUAL] != 0 and p1 > p0:
        qadd(x2[p0:p1], add[0], add[1], add[2], y2[p0:p1], add[3], add[4], add[5], add[6], add[7], add[8],
             INT8_LO, INT8_HI, y2[p0:p1])


@njit(cache=True, inline="always")
def _head(arena, head, layers, pool, out, tid, threads, sync):
    """The head conv (each thread its pixels), the pool and the classifier (thread 0:
    a few microseconds)."""
    pixels, cout = head[HEAD_PIXELS], head[HEAD_COUT]
    x = arena[head[HEAD_X]:head[HEAD_X] + pixels * head[HEAD_CIN]].reshape((pixels, head[HEAD_CIN]))
    conv = arena[head[HEAD_CONV]:head[HEAD_CONV] + pixels * cout].reshape((pixels, cout))
    pooled = arena[head[HEAD_POOLED]:head[HEAD_POOLED] + cout]
    p0, p1 = share(pixels, tid, threads)
    if p1 > p0:
        packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = layers[0]
        qpointwise(x[p0:p1], packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, conv[p0:p1])
    barrier(sync, tid, threads)
    if tid == 0:
        mean, x_zero, mult, shift, y_zero = pool
        if mean != 0:
            qmean(conv, x_zero, mult, shift, y_zero, INT8_LO, INT8_HI, pooled)
        else:
            qaverage(conv, INT8_LO, INT8_HI, pooled, True)
        if head[HEAD_CLASSES] == 0:
            for c in range(cout):  # not out[:] = pooled: its shape check's message compiles Numba's str (3 s)
                out[c] = pooled[c]
        else:
            packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = layers[1]
            qpointwise(pooled.reshape((1, cout)), packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi,
                       out.reshape((1, out.shape[0])))
    barrier(sync, tid, threads)  # when the caller returns, every share is written
