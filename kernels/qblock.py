"""The integer inverted residual, row-streamed: one output row at a time, exactly as
TFLite's reference kernels compute the whole block.

Each block keeps a 3-row int8 line buffer of its expansion (row r in slot r % 3, all
`hidden` channels: each slice has its own channels of it), one int8 depthwise row of one
slice, and, with t > 1 slices, one output row of int32 projection sums [Wo, cout]: every
slice adds its share of the row into them (the projection is linear in its inputs, and
int32 sums wrap the same in any order), then the row is requantized once. The residual
is TFLite's ADD on the row. These row steps serve the row-streamed block (qstreamed) and
the row pipeline (qpipeline.py).

A block's numbers come as a record, a row of an int64 table (its fields below, made by
mnv2engine/quantized.py); its layers' integers as tuples in typed lists, one entry per
slice (index rec[SLICE0] + s; the stem's, of block 0, at s):

    stems       (wc int16 [4, 4, 3, cs], bias, mult, shift, x_zero, y_zero, lo, hi)
    expands,    (packed, colsum, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi):
    projects    qgemm.pack_qweights' packing; a slice's projection is its input rows,
                with the whole layer's bias and requantization
    dws         (wc int16 [4, 4, cs], bias, mult, shift, x_zero, y_zero, lo, hi)
    add         int64 [9]: ADD's integers (AddParams' order)

The arena is int8 (every activation), `sums` the same bytes as int32.
"""
import numpy as np
from numba import njit

from .geometry import last_row_needed
from .qconv import qconv3x3_row
from .qdepthwise import qdepthwise_row
from .qgemm import qpointwise, qpointwise_acc
from .qops import qadd, qrequantize

# A block's record: its geometry, where its slices' layers are, and where its buffers
# lie (X, Y, E, D: bytes into the arena; SUMS: int32 elements, -1 for none). X_ROWS and
# Y_ROWS: the rows of a ring of input or output rows (0: the whole tensor). MODE: how the
# block runs (modes.py's numbers).
(STEM, H, W, CIN, HIDDEN, COUT, HO, WO, HE, WE, EXP_STRIDE, EXP_TOP, EXP_LEFT, DW_STRIDE, DW_TOP,
 DW_LEFT, T, RESIDUAL, SLICE0, EDGES, X, X_ROWS, Y, Y_ROWS, E, D, SUMS, MODE, FIELDS) = range(29)
INT8_LO, INT8_HI = -128, 127


@njit(cache=True, inline="always")  # returns a view: inlined, so no kernel returns one
def _ring(arena, rec, c0, c1):
    """The E ring of channels c0..c1: [3, We, c1 - c0]."""
    at = rec[E] + 3 * rec[WE] * c0
    return arena[at:at + 3 * rec[WE] * (c1 - c0)].reshape((3, rec[WE], c1 - c0))


@njit(cache=True, nogil=True)
def qexpand_row(arena, rec, edges, stems, expands, image, x_row, r):
    """Expansion row r of every slice into its ring slot r % 3: the stem's row r of the
    image (block 0), or the 1x1 expansion of the input row x_row [W, cin]."""
    for s in range(rec[T]):
        c0, c1 = edges[rec[EDGES] + s], edges[rec[EDGES] + s + 1]
        out = _ring(arena, rec, c0, c1)[r % 3]
        if rec[STEM] != 0:
            wc, bias, mult, shift, xz, yz, lo, hi = stems[s]
            qconv3x3_row(image, r, wc, bias, mult, shift, xz, yz, lo, hi, rec[EXP_STRIDE], rec[EXP_TOP],
                         rec[EXP_LEFT], out)
        else:
            packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = expands[rec[SLICE0] + s]
            qpointwise(x_row, packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, out)


@njit(cache=True, nogil=True)
def qemit_row(arena, sums, rec, edges, dws, projects, add, x_row, y_row, oy):
    """Output row oy into y_row [Wo, cout], once the ring holds the rows its depthwise
    reads: per slice, its depthwise row projected (t = 1: requantized at once; t > 1:
    added into the row's int32 sums, requantized after the last slice); then + the
    residual's input row x_row."""
    t, Wo, cout = rec[T], rec[WO], rec[COUT]
    n = Wo if t > 1 else 0
    at = max(rec[SUMS], 0)
    acc = sums[at:at + n * cout].reshape((n, cout))
    for s in range(t):
        c0, c1 = edges[rec[EDGES] + s], edges[rec[EDGES] + s + 1]
        d = arena[rec[D]:rec[D] + Wo * (c1 - c0)].reshape((Wo, c1 - c0))
        wc, bias, mult, shift, xz, yz, lo, hi = dws[rec[SLICE0] + s]
        qdepthwise_row(_ring(arena, rec, c0, c1), rec[HE], oy, wc, bias, mult, shift, xz, yz, lo, hi,
                       rec[DW_STRIDE], rec[DW_TOP], rec[DW_LEFT], d)
        packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi = projects[rec[SLICE0] + s]
        if t == 1:
            qpointwise(d, packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, y_row)
        else:
            if s == 0:
                acc[:] = 0
            qpointwise_acc(d, packed, colsum, xz, wz, acc)
            if s == t - 1:
                qrequantize(acc, bias, mult, shift, yz, lo, hi, y_row)
    if rec[RESIDUAL] != 0:
        qadd(x_row, add[0], add[1], add[2], y_row, add[3], add[4], add[5], add[6], add[7], add[8],
             INT8_LO, INT8_HI, y_row)


@njit(cache=True, nogil=True)
def qstreamed(arena, sums, rec, edges, stems, expands, dws, projects, add, image, x, y):
    """A whole block, row-streamed: x [H, W, cin] (block 0: the image) -> y [Ho, Wo, cout],
    each expansion row made just before the depthwise first needs it (the ring's oldest
    row is then no longer read) and each output row projected at once."""
    made = 0
    for oy in range(rec[HO]):
        while made <= last_row_needed(oy, rec[DW_STRIDE], rec[DW_TOP], rec[HE]):
            qexpand_row(arena, rec, edges, stems, expands, image, x[0] if rec[STEM] != 0 else x[made], made)
            made += 1
        qemit_row(arena, sums, rec, edges, dws, projects, add, x[oy], y[oy], oy)
