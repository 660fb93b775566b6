"""A 3x3 depthwise conv fed one input row at a time: each row is folded into the output
rows it belongs to, as soon as it exists.

depthwise_row (_rows.py) makes an output row from three input rows held at once. At
stride 2, output row oy reads input rows 2oy - top .. 2oy - top + 2, so an input row
feeds at most two output rows, each half as wide: keeping those two rows of partial
sums costs one input row's bytes, where a 3-row line buffer costs three. The row
pipeline (pipeline.py) does this in its stride-2 blocks (1.0/224: block 1's 126 KiB
line buffer and 21 KiB depthwise row become 42 KiB of sums and a 42 KiB row).

The sums are made in depthwise_row's order, bias first, then kernel rows 0, 1, 2, each
tap left to right, one rounding per FMA, so they are the same floats; a tap on the
padding is skipped where depthwise_row multiplies by a zero weight.
"""
from numba import njit

from ._rows import FASTMATH
from .simd import LANES, vfma, vload, vstore


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def fold_row(e, w, ky, stride, pad_left, start, bias, sums):
    """sums [Wo, C] = (bias if start else sums) + kernel row ky of the depthwise over the
    input row e [W, C]: sums[ox] += sum over kx of w[ky, kx] * e[ox * stride - pad_left + kx]."""
    W, C = e.shape
    Wo = sums.shape[0]
    for c in range(0, C, LANES):
        n = min(LANES, C - c)
        w0, w1, w2 = vload(w, (ky, 0, c), n), vload(w, (ky, 1, c), n), vload(w, (ky, 2, c), n)
        b = vload(bias, (c,), n)
        for ox in range(Wo):
            ix = ox * stride - pad_left
            a = b if start else vload(sums, (ox, c), n)
            if ix >= 0:
                a = vfma(vload(e, (ix, c), n), w0, a)
            if 0 <= ix + 1 < W:
                a = vfma(vload(e, (ix + 1, c), n), w1, a)
            if ix + 2 < W:
                a = vfma(vload(e, (ix + 2, c), n), w2, a)
            vstore(sums, (ox, c), n, a)
