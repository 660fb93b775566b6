"""Row-level building blocks shared by the whole-tensor kernels and the fused block.

Each computes one output row (a [W, channels] slab) of one operator, so the same code
serves the materialized evaluation (every row, one operator at a time) and the streamed
one (rows produced only when the next operator needs them). Every weight argument is
exactly the slice of channels being computed, as a C-contiguous array starting at
index 0: with offsets inside the loops instead, LLVM vectorizes the GEMM half as well
(measured: 2x slower expansion rows).
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH, gemm


@njit(cache=True, fastmath=FASTMATH)
def fill_bias(out, b):
    """out[p, :] = b for every row p of out [P, C]."""
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = b[c]


@njit(cache=True, fastmath=FASTMATH)
def clamp(out, lo, hi):
    """The epilogue's clamp, in place on out [P, C]; lo, hi = -inf, inf leaves it linear."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 == -np.inf and hi32 == np.inf:
        return
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = min(max(out[p, c], lo32), hi32)


@njit(cache=True, fastmath=FASTMATH)
def pointwise_row(x, w, b, lo, hi, out):
    """out = clamp(x @ w + b, lo, hi); x [P, Cin], w [Cin, C], out [P, C]."""
    gemm(x, w, b, False, lo, hi, out)


@njit(cache=True, fastmath=FASTMATH)
def depthwise_row(e, H, oy, w, b, stride, pad_top, pad_left, lo, hi, out):
    """Output row `oy` of a 3x3 depthwise conv, with the clamp epilogue.

    e [R, W, C] holds input row iy at e[iy % R] (R = H for a whole tensor, 3 for a line
    buffer); H is the input height; w [3, 3, C], b [C]; out [Wo, C]. Positions outside
    [0, H) x [0, W) are the zero padding; the bottom and right padding only show in how
    many output rows and columns the caller asks for.
    """
    R, W, C = e.shape
    Wo = out.shape[0]
    lo32, hi32 = np.float32(lo), np.float32(hi)
    iy0 = oy * stride - pad_top
    if iy0 >= 0 and iy0 + 2 < H:
        r0, r1, r2 = e[iy0 % R], e[(iy0 + 1) % R], e[(iy0 + 2) % R]
    else:
        r0 = r1 = r2 = e[0]  # unused: every pixel of this row takes the padded path
    for ox in range(Wo):
        ix = ox * stride - pad_left
        if iy0 >= 0 and iy0 + 2 < H and ix >= 0 and ix + 2 < W:
            # Interior: all nine taps exist; one sum per channel, one store.
            for c in range(C):
                acc = (b[c] + r0[ix, c] * w[0, 0, c] + r0[ix + 1, c] * w[0, 1, c] + r0[ix + 2, c] * w[0, 2, c]
                       + r1[ix, c] * w[1, 0, c] + r1[ix + 1, c] * w[1, 1, c] + r1[ix + 2, c] * w[1, 2, c]
                       + r2[ix, c] * w[2, 0, c] + r2[ix + 1, c] * w[2, 1, c] + r2[ix + 2, c] * w[2, 2, c])
                out[ox, c] = min(max(acc, lo32), hi32)
        else:
            _depthwise_padded_pixel(e, H, iy0, ix, w, b, lo32, hi32, out[ox])


@njit(cache=True, fastmath=FASTMATH)
def _depthwise_padded_pixel(e, H, iy0, ix0, w, b, lo, hi, out):
    """One output pixel whose 3x3 window overlaps the zero padding: out [C]."""
    R, W, C = e.shape
    for c in range(C):
        out[c] = b[c]
    for ky in range(3):
        iy = iy0 + ky
        if iy < 0 or iy >= H:
            continue
        row = e[iy % R]
        for kx in range(3):
            ix = ix0 + kx
            if ix < 0 or ix >= W:
                continue
            for c in range(C):
                out[c] += row[ix, c] * w[ky, kx, c]
    for c in range(C):
        out[c] = min(max(out[c], lo), hi)


@njit(cache=True, fastmath=FASTMATH)
def conv3x3_row(x, oy, w, b, stride, pad_top, pad_left, lo, hi, out):
    """Output row `oy` of a full 3x3 conv (the stem).

    x [H, W, Cin] one image; w [9 * Cin, C], the HWIO kernel flattened over
    (ky, kx, ci); b [C]; out [Wo, C]. As in matmul_acc, four output pixels whose windows
    lie wholly inside the image share each load of a weight row; pixels touching the
    padding take the checked path.
    """
    H, W, Cin = x.shape
    Wo, C = out.shape
    fill_bias(out, b)
    iy0 = oy * stride - pad_top
    rows_inside = iy0 >= 0 and iy0 + 2 < H
    ox = 0
    while ox < Wo:
        ix0 = ox * stride - pad_left
        if rows_inside and ox + 4 <= Wo and ix0 >= 0 and ix0 + 3 * stride + 2 < W:
            for ky in range(3):
                for kx in range(3):
                    k = (ky * 3 + kx) * Cin
                    for ci in range(Cin):
                        row = x[iy0 + ky]
                        ix = ix0 + kx
                        x0, x1 = row[ix, ci], row[ix + stride, ci]
                        x2, x3 = row[ix + 2 * stride, ci], row[ix + 3 * stride, ci]
                        for c in range(C):
                            wv = w[k + ci, c]
                            out[ox, c] += x0 * wv
                            out[ox + 1, c] += x1 * wv
                            out[ox + 2, c] += x2 * wv
                            out[ox + 3, c] += x3 * wv
            ox += 4
        else:
            _conv3x3_padded_pixel(x, iy0, ix0, w, out[ox])
            ox += 1
    clamp(out, lo, hi)


@njit(cache=True, fastmath=FASTMATH)
def _conv3x3_padded_pixel(x, iy0, ix0, w, out):
    """Accumulate one output pixel whose window may overlap the zero padding: out [C]."""
    H, W, Cin = x.shape
    C = out.shape[0]
    for ky in range(3):
        iy = iy0 + ky
        if iy < 0 or iy >= H:
            continue
        for kx in range(3):
            ix = ix0 + kx
            if ix < 0 or ix >= W:
                continue
            k = (ky * 3 + kx) * Cin
            for ci in range(Cin):
                xv = x[iy, ix, ci]
                for c in range(C):
                    out[c] += xv * w[k + ci, c]
