"""The integer row pipeline: the stem and the first blocks, row by row across blocks, in int8.

The walk is pipeline.py's (read its docstring): the last piped block wants its next
output row; its depthwise needs expansion rows; each needs an input row that the block
before owes, and so on down to the image. Every row of every tensor is made once; no
tensor of the chain exists whole but the last block's output.

Each piped block holds the buffers of the row steps of qblock.py: a 3-row int8 E ring at
either stride (at stride 2 the next output row reuses one of its rows; pipeline.py's
float fold into two rows of depthwise sums would take int32 sums, 4/3 of the ring's
bytes), one int8 D row of a slice, with t > 1 one row of int32 projection sums, and a
ring of its output rows that the next block reads (qblock's record: Y, Y_ROWS; 0 rows
for the last block, whose output is whole). One image, one thread.
"""
from numba import njit

from .geometry import last_row_needed
from .qblock import (CIN, COUT, DW_STRIDE, DW_TOP, HE, HO, RESIDUAL, W, WO, X, X_ROWS, Y, Y_ROWS, qemit_row,
                     qexpand_row)

E_MADE, OUT_MADE = 0, 1  # the counters of state: next expansion row, next output row, per block


@njit(cache=True, nogil=True)
def qpipeline(arena, sums, recs, piped, edges, stems, expands, dws, projects, adds, image, state):
    """Blocks 0 .. piped - 1 of the records `recs` [blocks, FIELDS] on one image [H, W, 3],
    into the last one's whole output. state int64 [2, piped]: the walk's counters."""
    last = piped - 1
    e_made, out_made = state[E_MADE], state[OUT_MADE]
    for i in range(piped):
        e_made[i] = out_made[i] = 0  # output row 0's window starts at expansion row 0
    i = last
    while out_made[last] < recs[last, HO]:
        rec = recs[i]
        r = e_made[i]
        if r <= last_row_needed(out_made[i], rec[DW_STRIDE], rec[DW_TOP], rec[HE]):
            if i > 0 and out_made[i - 1] <= r:
                i -= 1  # the block before owes this input row
                continue
            x_row = _row(arena, rec, X, X_ROWS, rec[W], rec[CIN], r)  # block 0: unread (the stem reads the image)
            qexpand_row(arena, rec, edges, stems, expands, image, x_row, r)
            e_made[i] += 1
        else:
            oy = out_made[i]
            y_row = _row(arena, rec, Y, Y_ROWS, rec[WO], rec[COUT], oy)
            x_row = _row(arena, rec, X, X_ROWS, rec[W], rec[CIN], oy) if rec[RESIDUAL] != 0 else y_row
            qemit_row(arena, sums, rec, edges, dws, projects, adds[i], x_row, y_row, oy)
            out_made[i] += 1
            if i < last:
                i += 1  # hand the row on


@njit(cache=True, inline="always")  # returns a view: inlined, so no kernel returns one
def _row(arena, rec, at_field, rows_field, width, channels, r):
    """Row r of a block's input or output: a slot of its ring, or a row of the whole tensor."""
    size = width * channels
    rows = rec[rows_field]
    at = rec[at_field] + (r % rows if rows > 0 else r) * size
    return arena[at:at + size].reshape((width, channels))

