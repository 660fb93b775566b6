"""The inverted residual block, fused, in the three evaluations of the paper and beyond.

    y = project(relu6(depthwise(relu6(expand(x))))) (+ x)

Section 5 of the paper writes the block as F(x) = [A o N o B] x, composed in the order
applied: A is the linear expansion, N the per-channel non-linearity with the depthwise
filter (ReLU6, depthwise, ReLU6) and B the linear projection. Slicing the expanded
channels into t groups gives F(x) = sum_i (A_i o N o B_i)(x): expand slice i (here with
the bias and ReLU6 of the expansion conv), filter it depthwise, project it and accumulate
into the output. The sum is exact because B is linear. `bounds` holds the t + 1 edges.

  materialized  (t = 1) expand everything, then filter, then project: E [N, He, We,
                hidden] and D [N, Ho, Wo, hidden] exist whole.
  sliced        (t > 1) per slice and image, E and D hold one slice, whole; the slice is
                computed in bands of rows, so that what one phase writes the next reads
                from cache.
  streamed      per slice, E lives in a 3-row line buffer and D in one row: expansion
                rows are made just before the depthwise needs them, and each output row
                is projected as soon as it is filtered. With t > 1 the slices take turns
                on bands of output rows.

The fourth mode, piped, runs several blocks row by row (pipeline.py, with this file's
row steps). For the first block the expansion is the stem conv: the paper's first-layer
trick, so the stem's output is sliced and streamed like any other expansion.

Compile time: everything between inverted_residual and the kernels is inlined
(inline="always"), since Numba compiles each function that stays a call again with all
it calls (0.5-2 s of a cold start per level). The kernels themselves and
inverted_residual stay calls, compiled once each.
"""
import numpy as np
from numba import njit

from .depthwise import depthwise_row
from .epilogue import LINEAR, RELU6, fill_bias
from .gemm import FASTMATH, gemm, pack_panels, pointwise_row
from .geometry import (block_input, block_output, expanded_height, expanded_width, first_row_needed,
                       last_row_needed, slice_bounds, slice_weights)
from .modes import MATERIALIZED, SLICED, STREAMED
from .pairs import pack_pairs, pointwise_pairs, uses_pairs
from .simd import LANES
from .stem import conv3x3_row, pack_stem
from .sync import balance_barrier, balanced_share, barrier, now_ns, share

EXPAND, DEPTHWISE = 0, 1  # a block's two learned cuts (cuts[i, EXPAND]: of the stem's rows)
ROW_BAND = 32  # output rows per band: of a sliced block's slice, or of a row-streamed block's turns


def pack_slices(w: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Lay out the columns of w [..., hidden] slice by slice: w[..., c0:c1] for each slice,
    each C-contiguous, one after the other, as a flat array: the block kernel then sees
    each slice's depthwise weights as one contiguous [3, 3, cs] array."""
    w2 = w.reshape(-1, w.shape[-1])
    return np.concatenate([w2[:, c0:c1].ravel() for c0, c1 in zip(bounds[:-1], bounds[1:])])


def pack_expansion(w: np.ndarray, bounds: np.ndarray, stem: bool) -> np.ndarray:
    """The expansion weights of each slice, one slice after the other, as a flat array:
    w [K, hidden] as GEMM panels (pack_panels) or, for a slice whose width is not a
    multiple of 16, by pairs of inputs (pack_pairs); the stem's [27, hidden] with taps in
    lanes (pack_stem)."""
    return np.concatenate([_pack_expansion_slice(w[:, c0:c1].copy(), stem).ravel()
                           for c0, c1 in zip(bounds[:-1], bounds[1:])])


def _pack_expansion_slice(w, stem):
    if stem:
        return pack_stem(w, w.shape[0] // 9)
    return pack_pairs(w) if uses_pairs(w.shape[1], w.shape[0]) else pack_panels(w)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def inverted_residual(arena, params, ints, blocks, i, image, cuts, tid, threads, sync,
                      materialized=True, sliced=True, streamed=True, narrow=True):
    """Block i of the table `blocks` (records of mnv2engine/program.py), in its mode.

    arena, params, ints     the pass's activations, packed weights (pack_expansion,
                            pack_slices, pack_panels) and slice edges, where the
                            block's record says
    image [N, H, W, 3]      the caller's input: block 0's x, read where it is
    cuts int64 [blocks, 2]  where two threads cut the rows of a materialized block's
                            stem and depthwise: learned from pass to pass (sync.py)
    tid, threads, sync      this call is thread tid of `threads` that compute the block
                            together (sync.py); every thread makes the same call
    materialized, sliced,   True, or None to leave that code out (modes.Compiled): a
    streamed, narrow        block that needs it then raises
    """
    b = blocks[i]
    x = image if b.stem != 0 else block_input(arena, b)
    y = block_output(arena, b)
    bounds = slice_bounds(ints, b)
    if narrow is None:
        for s in range(b.t):
            if (bounds[s + 1] - bounds[s]) % LANES != 0:
                raise ValueError("this block's narrow slices were left out of the compiled code")
    if b.mode == STREAMED:
        if streamed is None:
            raise ValueError("the streamed evaluation was left out of the compiled code")
        _streamed(arena, params, ints, b, x, y, tid, threads, narrow)
    elif b.mode == MATERIALIZED:
        if materialized is None:
            raise ValueError("the materialized evaluation was left out of the compiled code")
        _materialized(arena, params, ints, b, x, y, cuts[i], tid, threads, sync, narrow)
    elif b.mode == SLICED:
        if sliced is None:
            raise ValueError("the sliced evaluation was left out of the compiled code")
        # A slice holds one image at a time, so its scratch is per image; the slices of
        # an image follow each other, so that its x and y stay in cache between them.
        for n in range(b.n):
            for s in range(b.t):
                _sliced(arena, params, ints, b, x, y, n, s, tid, threads, sync, narrow)
    else:
        raise ValueError("a piped block runs in the pipeline, not on its own")
    barrier(sync, tid, threads)  # the next block reads all of y


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _materialized(arena, params, ints, b, x, y, cuts, tid, threads, sync, narrow):
    """t = 1, every image at once: expand all rows, then filter all, then project.

    E [N, He, We, hidden] and D [N, Ho, Wo, hidden]. The phase order is what lets the
    memory planner put D where x was and y where E was. The 1x1 convs run on a whole
    image at once, so the weights stream through the GEMM once per image, not once per
    row (which made the 7x7 blocks 1.6x slower).

    With threads > 1, thread tid does its share of the rows (or pixels) of each phase,
    and the threads meet between phases: each phase reads what all of them wrote. Two
    threads cut the rows of the stem and of the depthwise where they last finished
    together (sync.balanced_share), and keep the cuts for the next pass."""
    we, be, wd, bd, wp, bp = slice_weights(params, ints, b, 0)
    N, He, We, Ho, Wo = b.n, expanded_height(b), expanded_width(b), b.ho, b.wo
    e = arena[b.e:b.e + N * He * We * b.hidden].reshape((N, He, We, b.hidden))
    d = arena[b.d:b.d + N * Ho * Wo * b.hidden].reshape((N, Ho, Wo, b.hidden))
    if b.stem != 0:
        began = now_ns()
        lo, hi = balanced_share(cuts[EXPAND], N * He, tid, threads)
        for row in range(lo, hi):
            n, iy = row // He, row % He
            _expand_rows(x, n, iy, iy + 1, b, we, be, e[n], narrow)
        cut = balance_barrier(sync, tid, threads, began, cuts[EXPAND], N * He)
        if tid == 0:
            cuts[EXPAND] = cut
    else:
        for n in range(N):
            _expand_share(x, n, b, we, be, e[n], tid, threads, narrow)
        barrier(sync, tid, threads)
    began = now_ns()
    lo, hi = balanced_share(cuts[DEPTHWISE], N * Ho, tid, threads)
    for row in range(lo, hi):
        n, oy = row // Ho, row % Ho
        depthwise_relu6(e[n], He, oy, b, wd, bd, d[n, oy], narrow)
    cut = balance_barrier(sync, tid, threads, began, cuts[DEPTHWISE], N * Ho)
    if tid == 0:
        cuts[DEPTHWISE] = cut
    p0, p1 = share(Ho * Wo, tid, threads)
    for n in range(N):
        project(_pixels(d[n])[p0:p1], wp, bp, True, b.residual != 0, _pixels(x[n])[p0:p1], _pixels(y[n])[p0:p1])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _sliced(arena, params, ints, b, x, y, n, s, tid, threads, sync, narrow):
    """Slice s of image n, with E [He, We, cs] and D [Ho, Wo, cs] whole, computed in
    bands of ROW_BAND output rows: the expansion rows a band needs, its depthwise rows,
    then its projection. Every row of E and D is made, in the same buffers, but each is
    read again while it is still in cache. The planner gives a sliced block's x, E, D
    and y disjoint buffers (all are live for every slice), so this order is as safe as
    the phase order.

    Odd slices go from the bottom band up: each slice reads all of x and adds to all of
    y, and the rows the slice before touched last are the ones still in cache (the
    first block at t = 4, in a forward: 0.77 ms top down every slice, 0.64 ms).

    With threads > 1, the threads first expand their shares of E's rows and meet (a
    band's first depthwise row reads the rows above it); then each computes its own
    share of the output rows."""
    we, be, wd, bd, wp, bp = slice_weights(params, ints, b, s)
    He, We, Ho, Wo, cs = expanded_height(b), expanded_width(b), b.ho, b.wo, be.shape[0]
    e = arena[b.e:b.e + He * We * cs].reshape((He, We, cs))
    d = arena[b.d:b.d + Ho * Wo * cs].reshape((Ho, Wo, cs))
    made0 = made1 = 0  # E's rows made0..made1 are made
    if threads > 1:
        _expand_share(x, n, b, we, be, e, tid, threads, narrow)
        barrier(sync, tid, threads)
        made1 = He
    oy0, oy1 = share(Ho, tid, threads)
    bands = -(-(oy1 - oy0) // ROW_BAND)
    for i in range(bands):
        b0 = oy0 + ROW_BAND * (bands - 1 - i if s % 2 else i)
        b1 = min(b0 + ROW_BAND, oy1)
        need0 = first_row_needed(b0, b.dw_stride, b.dw_top)  # the E rows of the band's windows
        need1 = last_row_needed(b1 - 1, b.dw_stride, b.dw_top, He) + 1
        if made1 == made0:
            made0 = made1 = need0
        if need1 > made1:
            _expand_rows(x, n, made1, need1, b, we, be, e, narrow)
            made1 = need1
        if need0 < made0:
            _expand_rows(x, n, need0, made0, b, we, be, e, narrow)
            made0 = need0
        for oy in range(b0, b1):
            depthwise_relu6(e, He, oy, b, wd, bd, d[oy], narrow)
        project(_pixels(d[b0:b1]), wp, bp, s == 0, b.residual != 0, _pixels(x[n, b0:b1]), _pixels(y[n, b0:b1]))
    barrier(sync, tid, threads)  # the next slice overwrites E and D


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _streamed(arena, params, ints, b, x, y, tid, threads, narrow):
    """Each thread streams its own band of output rows through its own line buffer
    E [3, We, cs] and depthwise row D [Wo, cs]. With t > 1 the slices take turns on
    ROW_BAND rows at a time, so that the rows of x they read and of y they add to stay
    in cache from one slice to the next; each turn refills the slice's line buffer,
    recomputing the expansion rows above the band that the one before also used.
    A thread's buffers are sized for the widest slice (the planner's [threads, 3, We,
    widest]): the threads may be on slices of different widths at once."""
    bounds = slice_bounds(ints, b)
    We, Wo = expanded_width(b), b.wo
    oy0, oy1 = share(b.ho, tid, threads)
    band = ROW_BAND if b.t > 1 else max(oy1 - oy0, 1)
    widest = 0
    for s in range(b.t):
        widest = max(widest, bounds[s + 1] - bounds[s])
    e_at, d_at = b.e + tid * 3 * We * widest, b.d + tid * Wo * widest
    for n in range(b.n):
        for b0 in range(oy0, oy1, band):
            for s in range(b.t):
                w = slice_weights(params, ints, b, s)
                cs = w[1].shape[0]
                e = arena[e_at:e_at + 3 * We * cs].reshape((3, We, cs))
                d = arena[d_at:d_at + Wo * cs].reshape((Wo, cs))
                _stream_rows(x, y, n, b0, min(b0 + band, oy1), b, w, s == 0, e, d, narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _stream_rows(x, y, n, oy0, oy1, b, w, first, e, d, narrow):
    """Output rows oy0..oy1 of image n, row-streamed: row iy of the expansion lives in
    e[iy % 3]; each output row is projected as soon as it is filtered."""
    we, be, wd, bd, wp, bp = w
    He = expanded_height(b)
    next_row = first_row_needed(oy0, b.dw_stride, b.dw_top)
    for oy in range(oy0, oy1):
        needed = last_row_needed(oy, b.dw_stride, b.dw_top, He)
        while next_row <= needed:  # rows below `needed - 2` are no longer used: overwrite
            _expand_row(x, n, next_row, b, we, be, e[next_row % 3], narrow)
            next_row += 1
        depthwise_relu6(e, He, oy, b, wd, bd, d, narrow)
        project(d, wp, bp, first, b.residual != 0, x[n, oy], y[n, oy])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_share(x, n, b, we, be, e, tid, threads, narrow):
    """Thread tid's share of image n's expansion slice e [He, We, cs] (of a sliced block,
    or a materialized block's 1x1 conv): rows of the stem, pixels of a 1x1 conv (a 7x7
    block's 7 rows split 4 and 3 between two threads)."""
    if b.stem != 0:
        r0, r1 = share(e.shape[0], tid, threads)
        _expand_rows(x, n, r0, r1, b, we, be, e, narrow)
    else:
        p0, p1 = share(e.shape[0] * e.shape[1], tid, threads)
        expand_pointwise(_pixels(x[n])[p0:p1], we, be, _pixels(e)[p0:p1], narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_rows(x, n, r0, r1, b, we, be, e, narrow):
    """Rows r0..r1 of image n's expansion slice into e [He, We, cs]."""
    if b.stem != 0:
        for iy in range(r0, r1):
            _expand_row(x, n, iy, b, we, be, e[iy], narrow)
    elif r1 > r0:
        expand_pointwise(_pixels(x[n, r0:r1]), we, be, _pixels(e[r0:r1]), narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_row(x, n, iy, b, we, be, out, narrow):
    """Row iy of image n's expansion slice: out [We, cs]."""
    if b.stem != 0:
        conv3x3_row(x[n], iy, we, be, b.exp_stride, b.exp_top, b.exp_left, RELU6[0], RELU6[1], out)
    else:
        expand_pointwise(x[n, iy], we, be, out, narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def depthwise_relu6(e, He, oy, b, wd, bd, out, narrow):
    """Output row oy of block b's depthwise with ReLU6, from its expansion rows e."""
    depthwise_row(e, He, oy, wd, bd, b.dw_stride, b.dw_top, b.dw_left, RELU6[0], RELU6[1], out, narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def project(d, wp, bp, first, residual, x_row, y_row):
    """y_row [P, Cout] += d [P, cs] @ wp [cs, Cout]; the first slice starts from bias (+ x).
    P pixels: one row, or a whole image."""
    if first:
        fill_bias(y_row, bp)
        if residual:
            P, C = y_row.shape
            for i in range(P):
                for c in range(C):
                    y_row[i, c] += x_row[i, c]
    gemm(d, wp, bp, True, LINEAR[0], LINEAR[1], y_row)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def expand_pointwise(x, we, be, out, narrow):
    """A 1x1 expansion with ReLU6, packed by pack_expansion: x [P, cin], out [P, cs]."""
    if narrow is not None and uses_pairs(out.shape[1], x.shape[1]):
        pointwise_pairs(x, we, be, RELU6[0], RELU6[1], out)
    else:
        pointwise_row(x, we, be, RELU6[0], RELU6[1], out)


@njit(cache=True, inline="always")  # returns a view: inlined, so no kernel returns one
def _pixels(image):
    """An image [H, W, C] as the matrix [H * W, C] of its pixels (a view)."""
    H, W, C = image.shape
    return image.reshape((H * W, C))
