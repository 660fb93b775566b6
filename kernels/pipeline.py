"""The row pipeline: the stem and the first blocks, row by row across blocks.

Row streaming inside one block (block.py, `_stream`) still needs the block's input x
and output y whole. The pipeline goes further: a chain of blocks, from the stem on,
where each block's output row is handed to the next block as soon as it is made, so
no tensor of the chain exists whole but the last block's output. Each block holds

    E ring  [3, We, hidden]   the expansion rows its 3x3 depthwise still needs: row r in
                              slot r % 3 (at stride 2 the next output row reuses one)
    D row   [Wo, cs]          one depthwise row of one slice, projected at once
    x ring  [R, W, cin]       its input rows: the previous block's output rows. A 1x1
                              expansion turns input row r into E row r at once, so R = 1;
                              a residual block keeps row oy until it adds it to output
                              row oy, while its depthwise has pulled rows down to oy + 1:
                              R = 2 (plan.input_ring_rows computes it)

except at stride 2, where E row r is folded into the (at most two) depthwise rows it
feeds as soon as it is made (depthwise.fold_row), and the block holds instead

    E row   [We, cs]          one expansion row of one slice
    D sums  [2, Wo, hidden]   the partial sums of the two depthwise rows in the making:
                              row oy in slot oy % 2, projected once its last E row is in

The block 0 "expansion" is the stem conv (block.py's first-layer trick), which reads
the caller's image in place: its E ring is 3 rows of the stem's output.

The order is pull: the last block of the chain wants its next output row; it needs
some expansion rows; each needs an input row, which the block before owes; that one
needs expansion rows of its own, and so on down to the image. Every row of every
tensor is computed exactly once (line buffers, no overlapping patches): a counter
per block says which expansion row it makes next (`state[tid, 0]`) and which output
row (`state[tid, 1]`), and the walk moves one block down when an input row is
missing and one block up when it has made one.

With t > 1 every slice keeps its own E ring (all slices' rings together are hidden
channels wide: a row is needed again by the next output row, so no slice's ring can
be let go), and the D row is one slice wide.

With threads > 1, each thread makes its own band of the last block's output rows
through its own rings; the band's first rows need input rows above it, which the
thread before also made (a few rows per block at the seam: the only rows computed
twice). No barrier inside the pipeline.

_expand and _emit are inlined into the walk: each level Numba compiles on its own emits
all the kernels' code again.
"""
from numba import njit

from .block import depthwise_relu6, expand_pointwise, project
from .depthwise import fold_row
from .epilogue import RELU6, clamp
from .gemm import FASTMATH
from .geometry import (expanded_height, expanded_width, first_row_needed, last_row_needed, slice_bounds,
                       slice_weights, window_top)
from .modes import PIPED
from .stem import conv3x3_row
from .sync import share

E_MADE, OUT_MADE = 0, 1  # the counters of state[tid]: next expansion row, next output row


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def pipeline(arena, params, ints, blocks, image, state, tid, threads, narrow, taps):
    """Thread tid's band of the output rows of the pipeline (the leading blocks of
    `blocks` whose mode is PIPED), for every image of `image` [N, H, W, 3].

    state   int64 [threads, 2, len(blocks)], the counters (E_MADE, OUT_MADE) per block
    taps    None, or a float32 array that receives a copy of every output row of every
            piped block, each block's [N, Ho, Wo, cout] after the one before: for
            Engine.intermediates (no output but the last one exists whole otherwise)
    """
    L = 0
    while L < len(blocks) and blocks[L].mode == PIPED:
        L += 1
    last = L - 1
    oy0, oy1 = share(blocks[last].ho, tid, threads)
    if oy1 <= oy0:
        return
    e_made, out_made = state[tid, E_MADE], state[tid, OUT_MADE]
    for n in range(image.shape[0]):
        # The band's first output row needs expansion rows from its window's top; each
        # of those input rows is an output row of the block before, and so on down.
        out_made[last] = oy0
        for i in range(last, -1, -1):
            b = blocks[i]
            e_made[i] = first_row_needed(out_made[i], b.dw_stride, b.dw_top)
            if i > 0:
                out_made[i - 1] = e_made[i]
        i = last
        while out_made[last] < oy1:
            b = blocks[i]
            needed = last_row_needed(out_made[i], b.dw_stride, b.dw_top, expanded_height(b))
            if e_made[i] <= needed:
                if i > 0 and out_made[i - 1] <= e_made[i]:
                    i -= 1  # the block before owes this input row
                    continue
                _expand(arena, params, ints, blocks, i, image, n, e_made[i], out_made[i], tid, threads, narrow)
                e_made[i] += 1
            else:
                _emit(arena, params, ints, blocks, i, n, out_made[i], tid, threads, narrow, taps)
                out_made[i] += 1
                if i < last:
                    i += 1  # hand the row on


@njit(cache=True, inline="always")  # returns views: inlined, so no kernel returns one
def _weights(params, ints, b, s):
    """Slice s's weights (geometry.slice_weights) and its channel range."""
    bounds = slice_bounds(ints, b)
    we, be, wd, bd, wp, bp = slice_weights(params, ints, b, s)
    return we, be, wd, bd, wp, bp, bounds[s], bounds[s + 1]


@njit(cache=True, inline="always")
def _ring(arena, b, tid, threads, c0, c1, We):
    """Thread tid's E ring of the slice of channels c0..c1: [3, We, c1 - c0]; at
    stride 2, its E row [1, We, c1 - c0] (one for all slices)."""
    rows = 1 if _folded(b) else 3
    at = b.e + tid * (b.e_len // threads) + (0 if _folded(b) else rows * We * c0)
    return arena[at:at + rows * We * (c1 - c0)].reshape((rows, We, c1 - c0))


@njit(cache=True, inline="always")
def _sums(arena, b, tid, threads, c0, c1, oy):
    """At stride 2: thread tid's partial sums of depthwise row oy, channels c0..c1."""
    at = b.d + tid * (b.d_len // threads) + 2 * b.wo * c0 + (oy % 2) * b.wo * (c1 - c0)
    return arena[at:at + b.wo * (c1 - c0)].reshape((b.wo, c1 - c0))


@njit(cache=True, inline="always")
def _folded(b):
    """Whether the block folds each E row into its depthwise rows (depthwise.fold_row)."""
    return b.dw_stride == 2


@njit(cache=True, inline="always")
def _input_row(arena, b, tid, r):
    """Row r of the block's input, a slot of thread tid's ring of x_rows rows (every piped
    block but the first reads a ring; the first reads the image)."""
    size = b.w * b.cin
    at = b.x + (tid * b.x_rows + r % b.x_rows) * size
    return arena[at:at + size].reshape((b.w, b.cin))


@njit(cache=True, inline="always")
def _output_row(arena, b, n, tid, oy):
    """Row oy of image n's block output: a slot of the ring the next block reads
    (y_rows), or a row of the whole tensor (the pipeline's last block)."""
    size = b.wo * b.cout
    if b.y_rows == 0:
        at = b.y + (n * b.ho + oy) * size
    else:
        at = b.y + (tid * b.y_rows + oy % b.y_rows) * size
    return arena[at:at + size].reshape((b.wo, b.cout))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _expand(arena, params, ints, blocks, i, image, n, r, open_row, tid, threads, narrow):
    """Expansion row r of block i, every slice, into its E ring: the stem's row r from
    the image, or the 1x1 expansion of input row r. At stride 2, each slice's row is
    then folded into the sums of the depthwise rows from open_row on (the rows before
    are made, or another thread's) that it feeds."""
    b = blocks[i]
    We = expanded_width(b)
    for s in range(b.t):
        we_s, be_s, wd_s, bd_s, _, _, c0, c1 = _weights(params, ints, b, s)
        ring = _ring(arena, b, tid, threads, c0, c1, We)
        out = ring[r % ring.shape[0]]
        if b.stem != 0:
            conv3x3_row(image[n], r, we_s, be_s, b.exp_stride, b.exp_top, b.exp_left, RELU6[0], RELU6[1], out)
        else:
            expand_pointwise(_input_row(arena, b, tid, r), we_s, be_s, out, narrow)
        if _folded(b):
            top = b.dw_top
            for oy in range(max((r + top - 1) // 2, open_row), min((r + top) // 2, b.ho - 1) + 1):
                fold_row(out, wd_s, r - window_top(oy, 2, top), 2, b.dw_left, r == first_row_needed(oy, 2, top),
                         bd_s, _sums(arena, b, tid, threads, c0, c1, oy))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _emit(arena, params, ints, blocks, i, n, oy, tid, threads, narrow, taps):
    """Output row oy of block i: per slice, its depthwise row from the E ring, projected
    and summed into the row (the first slice starts from the bias, plus the residual's
    input row)."""
    b = blocks[i]
    We, He = expanded_width(b), expanded_height(b)
    y_row = _output_row(arena, b, n, tid, oy)
    x_row = _input_row(arena, b, tid, oy) if b.residual != 0 else y_row  # y_row: unused
    d_size = b.d_len // threads
    for s in range(b.t):
        _, _, wd_s, bd_s, wp_s, bp, c0, c1 = _weights(params, ints, b, s)
        if _folded(b):
            d = _sums(arena, b, tid, threads, c0, c1, oy)
            clamp(d, RELU6[0], RELU6[1])
        else:
            d = arena[b.d + tid * d_size:b.d + tid * d_size + b.wo * (c1 - c0)].reshape((b.wo, c1 - c0))
            depthwise_relu6(_ring(arena, b, tid, threads, c0, c1, We), He, oy, b, wd_s, bd_s, d, narrow)
        project(d, wp_s, bp, s == 0, b.residual != 0, x_row, y_row)
    if taps is not None:
        at = 0
        for k in range(i):
            at += blocks[k].n * blocks[k].ho * blocks[k].wo * blocks[k].cout
        at += (n * b.ho + oy) * b.wo * b.cout
        for k in range(b.wo * b.cout):
            taps[at + k] = y_row[k // b.cout, k % b.cout]
