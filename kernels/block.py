"""The inverted residual block, fused, in the three evaluations of the paper and beyond.

    y = project(relu6(depthwise(relu6(expand(x))))) (+ x)

Section 5 of the paper writes the block as F(x) = [A o N o B] x, composed in the order
applied: A is the linear expansion, N the per-channel non-linearity with the depthwise
filter (ReLU6, depthwise, ReLU6) and B the linear projection. Slicing the expanded
channels into t groups gives F(x) = sum_i (A_i o N o B_i)(x): expand slice i (here with
the bias and ReLU6 of the expansion conv), filter it depthwise, project it and accumulate
into the output. The sum is exact because B is linear. `bounds` holds the t + 1 edges.

  materialized  (t = 1, rows=False) expand everything, then filter, then project:
                E [N, He, We, hidden] and D [N, Ho, Wo, hidden] exist whole.
  sliced        (t > 1, rows=False) per slice and image, E and D hold one slice, whole;
                the slice is computed in bands of rows, so that what one phase writes
                the next reads from cache (_sliced).
  row-streamed  (rows=True) per slice, E lives in a 3-row line buffer and D in one row:
                expansion rows are made just before the depthwise needs them, and each
                output row is projected as soon as it is filtered. With t > 1 the slices
                take turns on bands of output rows.

For the first block the expansion is the stem conv (`stem=True`): the paper's first-layer
trick, so the stem's output is sliced and streamed like any other expansion.

Compile time: everything between inverted_residual and the kernels is inlined
(inline="always"), since Numba compiles each function that stays a call again with all
it calls (0.5-2 s of a cold start per level). The kernels themselves and
inverted_residual stay calls, compiled once each.
"""
import numpy as np
from numba import njit

from ._rows import FASTMATH, depthwise_row, fill_bias, pointwise_row
from .simd import LANES
from .stem import conv3x3_row, pack_stem, packed_shape as stem_shape
from .gemm import gemm, pack_panels, panels_shape
from .pairs import pack_pairs, packed_shape as pairs_shape, pointwise_pairs, uses_pairs
from .sync import balance_barrier, balanced_share, barrier, now_ns, share

RELU6 = (0.0, 6.0)
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


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_row(x, n, iy, stem, we, be, exp_stride, exp_pads, out, narrow):
    """Row iy of an expansion slice of image n: out [We, cs]."""
    if stem:
        conv3x3_row(x[n], iy, we, be, exp_stride, exp_pads[0], exp_pads[2], RELU6[0], RELU6[1], out)
    else:
        _pointwise(x[n, iy], we, be, out, narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _project(d, wp, bp, first, use_residual, x_row, y_row):
    """y_row [P, Cout] += d [P, cs] @ wp [cs, Cout]; the first slice starts from bias (+ x).
    P pixels: one row, or a whole image."""
    if first:
        fill_bias(y_row, bp)
        if use_residual:
            P, C = y_row.shape
            for i in range(P):
                for c in range(C):
                    y_row[i, c] += x_row[i, c]
    gemm(d, wp, bp, True, -np.inf, np.inf, y_row)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _materialized(x, y, stem, we, be, exp_stride, exp_pads, wd, bd, dw_stride, dw_pads,
                  wp, bp, use_residual, e, d, tid, threads, sync, tune, narrow):
    """t = 1, every image at once: expand all rows, then filter all, then project.

    e [N, He, We, hidden], d [N, Ho, Wo, hidden]. The phase order is what lets the memory
    planner put D where x was and y where E was. The 1x1 convs run on a whole image at
    once, so the weights stream through the GEMM once per image, not once per row
    (which made the 7x7 blocks 1.6x slower).

    With threads > 1, thread tid does its share of the rows (or pixels) of each phase,
    and the threads meet between phases: each phase reads what all of them wrote. Two
    threads cut the rows of the stem and of the depthwise where they last finished
    together (sync.balanced_share; `tune`, the block's row of network.BLOCK, keeps the
    cuts from one pass to the next).
    """
    N, He, Ho, Wo = x.shape[0], e.shape[1], d.shape[1], d.shape[2]
    if stem:
        began = now_ns()
        lo, hi = balanced_share(tune.exp_split, N * He, tid, threads)
        for row in range(lo, hi):
            n, iy = row // He, row % He
            _expand_rows(x, n, iy, iy + 1, stem, we, be, exp_stride, exp_pads, e[n], narrow)
        cut = balance_barrier(sync, tid, threads, began, tune.exp_split, N * He)
        if tid == 0:
            tune.exp_split = cut
    else:
        for n in range(N):
            _expand_share(x, n, stem, we, be, exp_stride, exp_pads, e[n], tid, threads, narrow)
        barrier(sync, tid, threads)
    began = now_ns()
    lo, hi = balanced_share(tune.dw_split, N * Ho, tid, threads)
    for row in range(lo, hi):
        n, oy = row // Ho, row % Ho
        depthwise_row(e[n], He, oy, wd, bd, dw_stride, dw_pads[0], dw_pads[2], RELU6[0], RELU6[1], d[n, oy], narrow)
    cut = balance_barrier(sync, tid, threads, began, tune.dw_split, N * Ho)
    if tid == 0:
        tune.dw_split = cut
    p0, p1 = share(Ho * Wo, tid, threads)
    for n in range(N):
        _project(_pixels(d[n])[p0:p1], wp, bp, True, use_residual, _pixels(x[n])[p0:p1], _pixels(y[n])[p0:p1])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _sliced(x, y, n, stem, we, be, exp_stride, exp_pads, wd, bd, dw_stride, dw_pads,
            wp, bp, s, use_residual, e, d, tid, threads, sync, narrow):
    """Slice s of image n, with e [He, We, cs] and d [Ho, Wo, cs] whole, computed in
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
    He, Ho = e.shape[0], d.shape[0]
    made0 = made1 = 0  # E's rows made0..made1 are made
    if threads > 1:
        _expand_share(x, n, stem, we, be, exp_stride, exp_pads, e, tid, threads, narrow)
        barrier(sync, tid, threads)
        made1 = He
    oy0, oy1 = share(Ho, tid, threads)
    bands = -(-(oy1 - oy0) // ROW_BAND)
    for i in range(bands):
        b0 = oy0 + ROW_BAND * (bands - 1 - i if s % 2 else i)
        b1 = min(b0 + ROW_BAND, oy1)
        # the E rows of the band's taps
        need0, need1 = max(b0 * dw_stride - dw_pads[0], 0), min((b1 - 1) * dw_stride - dw_pads[0] + 3, He)
        if made1 == made0:
            made0 = made1 = need0
        if need1 > made1:
            _expand_rows(x, n, made1, need1, stem, we, be, exp_stride, exp_pads, e, narrow)
            made1 = need1
        if need0 < made0:
            _expand_rows(x, n, need0, made0, stem, we, be, exp_stride, exp_pads, e, narrow)
            made0 = need0
        for oy in range(b0, b1):
            depthwise_row(e, He, oy, wd, bd, dw_stride, dw_pads[0], dw_pads[2], RELU6[0], RELU6[1], d[oy], narrow)
        _project(_pixels(d[b0:b1]), wp, bp, s == 0, use_residual, _pixels(x[n, b0:b1]), _pixels(y[n, b0:b1]))
    barrier(sync, tid, threads)  # the next slice overwrites E and D


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_share(x, n, stem, we, be, exp_stride, exp_pads, e, tid, threads, narrow):
    """Thread tid's share of image n's expansion slice e [He, We, cs] (of a sliced block,
    or a materialized block's 1x1 conv): rows of the stem, pixels of a 1x1 conv (a 7x7
    block's 7 rows split 4 and 3 between two threads)."""
    if stem:
        r0, r1 = share(e.shape[0], tid, threads)
        _expand_rows(x, n, r0, r1, stem, we, be, exp_stride, exp_pads, e, narrow)
    else:
        p0, p1 = share(e.shape[0] * e.shape[1], tid, threads)
        _pointwise(_pixels(x[n])[p0:p1], we, be, _pixels(e)[p0:p1], narrow)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand_rows(x, n, r0, r1, stem, we, be, exp_stride, exp_pads, e, narrow):
    """Rows r0..r1 of image n's expansion slice into e [He, We, cs]."""
    if stem:
        for iy in range(r0, r1):
            conv3x3_row(x[n], iy, we, be, exp_stride, exp_pads[0], exp_pads[2], RELU6[0], RELU6[1], e[iy])
    elif r1 > r0:
        _pointwise(_pixels(x[n, r0:r1]), we, be, _pixels(e[r0:r1]), narrow)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _pointwise(x, we, be, out, narrow):
    """A 1x1 expansion with ReLU6, packed by pack_expansion."""
    if narrow is not None and uses_pairs(out.shape[1], x.shape[1]):
        pointwise_pairs(x, we, be, RELU6[0], RELU6[1], out)
    else:
        pointwise_row(x, we, be, RELU6[0], RELU6[1], out)


@njit(cache=True, inline="always")  # returns a view: inlined, so no kernel returns one
def _pixels(image):
    """An image [H, W, C] as the matrix [H * W, C] of its pixels (a view)."""
    H, W, C = image.shape
    return image.reshape((H * W, C))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _stream(x, y, n, oy0, oy1, stem, we, be, exp_stride, exp_pads, wd, bd, dw_stride, dw_pads,
            wp, bp, first, use_residual, e, d, narrow):
    """Row-streamed order for output rows oy0..oy1 of image n: e [3, We, cs] line buffer,
    d [Wo, cs] one row. Row iy of the expansion lives in e[iy % 3]."""
    He = _expanded_height(x, stem, exp_stride, exp_pads)
    next_row = max(oy0 * dw_stride - dw_pads[0], 0)  # the first expansion row these rows need
    for oy in range(oy0, oy1):
        needed = min(oy * dw_stride - dw_pads[0] + 2, He - 1)
        while next_row <= needed:  # rows below `needed - 2` are no longer used: overwrite
            _expand_row(x, n, next_row, stem, we, be, exp_stride, exp_pads, e[next_row % 3], narrow)
            next_row += 1
        depthwise_row(e, He, oy, wd, bd, dw_stride, dw_pads[0], dw_pads[2], RELU6[0], RELU6[1], d, narrow)
        _project(d, wp, bp, first, use_residual, x[n, oy], y[n, oy])


@njit(cache=True)
def _expanded_height(x, stem, exp_stride, exp_pads):
    if stem:
        return (x.shape[1] + exp_pads[0] + exp_pads[1] - 3) // exp_stride + 1
    return x.shape[1]


@njit(cache=True)
def _expanded_width(x, stem, exp_stride, exp_pads):
    if stem:
        return (x.shape[2] + exp_pads[2] + exp_pads[3] - 3) // exp_stride + 1
    return x.shape[2]


@njit(cache=True)
def _expansion_size(cs, stem, cin):
    """Floats of one slice's packed expansion weights: cs channels from cin inputs."""
    a, b, c = _expansion_shape(cs, stem, cin)
    return a * b * c


@njit(cache=True)
def _expansion_shape(cs, stem, cin):
    """The packed shape of one slice's expansion weights, as pack_expansion made it."""
    if stem:
        return stem_shape(9 * cin, cs)
    return pairs_shape(cin, cs) if uses_pairs(cs, cin) else panels_shape(cin, cs)


@njit(cache=True, inline="always")  # returns views: inlined, so no kernel returns one
def _slice_weights(we, be, wd, bd, wp, bounds, s, we_at, stem, cin):
    """Slice s's weights: expansion (packed, from we_at), its bias, depthwise, its bias,
    and the projection's rows for its channels."""
    c0, c1 = bounds[s], bounds[s + 1]
    cs = c1 - c0
    we_s = we[we_at:we_at + _expansion_size(cs, stem, cin)].reshape(_expansion_shape(cs, stem, cin))
    return we_s, be[c0:c1], wd[9 * c0:9 * c1].reshape((3, 3, cs)), bd[c0:c1], wp[:, c0:c1]


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def inverted_residual(x, stem, we, be, exp_stride, exp_pads, wd, bd, dw_stride, dw_pads,
                      wp, bp, bounds, use_residual, rows, ebuf, dbuf, y, tid, threads, sync, tune,
                      streamed=True, whole=True, sliced=True, narrow=True):
    """One inverted residual block, any t, materialized or row-streamed.

    x [N, H, W, Cin]        block input (the image when stem=True)
    we, be                  expansion: a 1x1 conv [Cin, hidden], or the 3x3 stem conv
                            [27, hidden] (HWIO flattened) of exp_stride and exp_pads;
                            `we` packed by slices (pack_expansion), be [hidden]
    wd, bd                  depthwise [3, 3, hidden] packed by slices (pack_slices), of
                            dw_stride and dw_pads (top, bottom, left, right)
    wp, bp                  linear projection [hidden, Cout], as panels (pack_panels)
    bounds int64 [t + 1]    slice i is channels bounds[i] .. bounds[i + 1]
    ebuf, dbuf              flat float32 scratch, sized by the planner for the mode (and,
                            row-streamed, one line buffer per thread)
    y [N, Ho, Wo, Cout]     output; must not overlap x
    tid, threads, sync      this call is thread tid of `threads` that compute the block
                            together (sync.py); every thread makes the same call
    tune                    the block's row of network.BLOCK: where two threads cut the
                            rows of a materialized block's phases (learned, and stored)
    streamed, whole, sliced True, or None to leave that evaluation out of the compiled
                            code (network.modes); a block that needs it then raises
    narrow                  True, or None where no slice is narrower than 16 channels
                            or not a multiple of them (then no weights are packed by
                            pairs, and no depthwise has 8 channels: that code is left out)
    """
    N = x.shape[0]
    He = _expanded_height(x, stem, exp_stride, exp_pads)
    We = _expanded_width(x, stem, exp_stride, exp_pads)
    Ho, Wo = y.shape[1], y.shape[2]
    t = len(bounds) - 1
    cin = x.shape[3]
    we_at = np.zeros(t + 1, np.int64)  # where each slice's expansion weights start in `we`
    for s in range(t):
        we_at[s + 1] = we_at[s] + _expansion_size(bounds[s + 1] - bounds[s], stem, cin)
    if (rows and streamed is None) or (not rows and t == 1 and whole is None) or (not rows and t > 1 and sliced is None):
        raise ValueError("this block's evaluation was left out of the compiled code")
    if narrow is None:
        for s in range(t):
            if (bounds[s + 1] - bounds[s]) % LANES != 0:
                raise ValueError("this block's narrow slices were left out of the compiled code")
    if rows:
        if streamed is None:  # not compiled (the type of None tells)
            return
        # Each thread streams its own band of output rows through its own line buffer.
        # With t > 1 the slices take turns on ROW_BAND rows of it at a time, so that the
        # rows of x they read and of y they add to stay in cache from one slice to the
        # next; each turn refills the slice's line buffer, recomputing the expansion
        # rows above the band that the one before also used.
        # A thread's buffers are sized for the widest slice (the planner's [threads, 3,
        # We, widest]): the threads may be on slices of different widths at once.
        oy0, oy1 = share(Ho, tid, threads)
        band = ROW_BAND if t > 1 else max(oy1 - oy0, 1)
        widest = 0
        for s in range(t):
            widest = max(widest, bounds[s + 1] - bounds[s])
        e_at, d_at = tid * 3 * We * widest, tid * Wo * widest
        for n in range(N):
            for b0 in range(oy0, oy1, band):
                for s in range(t):
                    cs = bounds[s + 1] - bounds[s]
                    we_s, be_s, wd_s, bd_s, wp_s = _slice_weights(we, be, wd, bd, wp, bounds, s, we_at[s], stem, cin)
                    e = ebuf[e_at:e_at + 3 * We * cs].reshape((3, We, cs))
                    d = dbuf[d_at:d_at + Wo * cs].reshape((Wo, cs))
                    _stream(x, y, n, b0, min(b0 + band, oy1), stem, we_s, be_s, exp_stride, exp_pads, wd_s, bd_s,
                            dw_stride, dw_pads, wp_s, bp, s == 0, use_residual, e, d, narrow)
    elif t == 1:
        if whole is None:
            return
        # every phase over the whole batch (the framework way)
        we_s, be_s, wd_s, bd_s, wp_s = _slice_weights(we, be, wd, bd, wp, bounds, 0, 0, stem, cin)
        e = ebuf[:N * He * We * be.shape[0]].reshape((N, He, We, be.shape[0]))
        d = dbuf[:N * Ho * Wo * be.shape[0]].reshape((N, Ho, Wo, be.shape[0]))
        _materialized(x, y, stem, we_s, be_s, exp_stride, exp_pads, wd_s, bd_s, dw_stride, dw_pads,
                      wp_s, bp, use_residual, e, d, tid, threads, sync, tune, narrow)
    else:
        if sliced is None:
            return
        # A slice holds one image at a time, so its scratch is per image; the slices of
        # an image follow each other, so that its x and y stay in cache between them
        # (slices outside, at batch 32 each slice fetched every image's x and y again).
        for n in range(N):
            for s in range(t):
                cs = bounds[s + 1] - bounds[s]
                we_s, be_s, wd_s, bd_s, wp_s = _slice_weights(we, be, wd, bd, wp, bounds, s, we_at[s], stem, cin)
                e = ebuf[:He * We * cs].reshape((He, We, cs))
                d = dbuf[:Ho * Wo * cs].reshape((Ho, Wo, cs))
                _sliced(x, y, n, stem, we_s, be_s, exp_stride, exp_pads, wd_s, bd_s, dw_stride, dw_pads,
                        wp_s, bp, s, use_residual, e, d, tid, threads, sync, narrow)
    barrier(sync, tid, threads)  # the next block reads all of y
