"""The int8 3x3 depthwise conv, exactly as TFLite's reference kernel, one output row at a time.

acc[c] = bias[c] + sum over the window's in-image taps of (x - x_zero) * (w - w_zero), in
int32, then requantized per channel (requant.to_8bit). A tap on the padding adds nothing.

The weights come centered and padded by pack_qdepthwise: wc[ky, kx] = w[ky, kx] - w_zero as
int16, and wc[3, :] = wc[:, 3] = 0. A tap on the padding reads the nearest real row or
column and takes the zero weight of row or column 3, so every pixel runs the same nine
multiply-adds with no branch per tap, and the loop over channels vectorizes.
(x - x_zero and w - w_zero each fit 9 bits, their product 17: int32 lanes.)
"""
import numpy as np
from numba import njit

from .qlanes import to_8bit_lanes

ZERO_TAP = 3  # the index of the zero row and column of packed weights
BLOCK = 16  # channels per vectorized block (int32 lanes: one AVX-512 vector)


@njit(cache=True, nogil=True)
def pack_qdepthwise(w, w_zero):
    """w int8 [3, 3, C] and its zero point -> int16 [4, 4, C]: w - w_zero, zeros at index 3."""
    C = w.shape[2]
    wc = np.zeros((4, 4, C), np.int16)
    for ky in range(3):
        for kx in range(3):
            for c in range(C):
                wc[ky, kx, c] = np.int16(w[ky, kx, c]) - np.int16(w_zero)
    return wc


@njit(cache=True, inline="always")
def _nearest(i, n):
    """The index i moved into [0, n)."""
    return min(max(i, 0), n - 1)


@njit(cache=True, inline="always")
def _weight_index(i, k, n):
    """Tap k of a window whose taps start at i: k if i + k is in [0, n), else the zero tap."""
    return k if 0 <= i + k < n else ZERO_TAP


@njit(cache=True, inline="always")
def _pixel(e, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2, bias, mult, shift, xz, y_zero, lo, hi, c):
    """Channel c of one output pixel: nine int32 products (of 9-bit values: 17 bits), the
    bias, the requantization. Sums wrap in int32, as TFLite's do."""
    acc = np.int32(bias[c])
    acc = np.int32(acc + (np.int32(e[r0, x0, c]) - xz) * np.int32(wc[k0, j0, c]))
    acc = np.int32(acc + (np.int32(e[r0, x1, c]) - xz) * np.int32(wc[k0, j1, c]))
    acc = np.int32(acc + (np.int32(e[r0, x2, c]) - xz) * np.int32(wc[k0, j2, c]))
    acc = np.int32(acc + (np.int32(e[r1, x0, c]) - xz) * np.int32(wc[k1, j0, c]))
    acc = np.int32(acc + (np.int32(e[r1, x1, c]) - xz) * np.int32(wc[k1, j1, c]))
    acc = np.int32(acc + (np.int32(e[r1, x2, c]) - xz) * np.int32(wc[k1, j2, c]))
    acc = np.int32(acc + (np.int32(e[r2, x0, c]) - xz) * np.int32(wc[k2, j0, c]))
    acc = np.int32(acc + (np.int32(e[r2, x1, c]) - xz) * np.int32(wc[k2, j1, c]))
    acc = np.int32(acc + (np.int32(e[r2, x2, c]) - xz) * np.int32(wc[k2, j2, c]))
    return to_8bit_lanes(acc, mult[c], shift[c], y_zero, lo, hi)


@njit(cache=True, nogil=True)
def qdepthwise_row(e, H, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """Output row `oy` of an int8 3x3 depthwise conv (packed weights: no w_zero argument).

    e int8 [R, W, C] holds input row iy at e[iy % R] (R = H for a whole image, 3 for a line
    buffer); H is the input height; wc = pack_qdepthwise(w, w_zero); bias, mult, shift int32
    [C]; out int8 [Wo, C]. The bottom and right padding only show in how many output rows
    and columns the caller asks for.

    Channels go in blocks of BLOCK, a constant trip count that LLVM vectorizes whole (a
    loop over all C leaves C mod 32 channels to a scalar remainder), then the rest.
    """
    R, W, C = e.shape
    Wo = out.shape[0]
    xz = np.int32(x_zero)
    iy = oy * stride - pad_top
    r0, r1, r2 = _nearest(iy, H) % R, _nearest(iy + 1, H) % R, _nearest(iy + 2, H) % R
    k0, k1, k2 = _weight_index(iy, 0, H), _weight_index(iy, 1, H), _weight_index(iy, 2, H)
    blocked = C - C % BLOCK
    for ox in range(Wo):
        ix = ox * stride - pad_left
        x0, x1, x2 = _nearest(ix, W), _nearest(ix + 1, W), _nearest(ix + 2, W)
        j0, j1, j2 = _weight_index(ix, 0, W), _weight_index(ix, 1, W), _weight_index(ix, 2, W)
        for c0 in range(0, blocked, BLOCK):
            for c in range(c0, c0 + BLOCK):
                out[ox, c] = _pixel(e, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2,
                                    bias, mult, shift, xz, y_zero, lo, hi, c)
        for c in range(blocked, C):
            out[ox, c] = _pixel(e, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2,
                                bias, mult, shift, xz, y_zero, lo, hi, c)


@njit(cache=True, nogil=True)
def qdepthwise3x3(x, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """The whole image, row by row: x int8 [H, W, C] -> out int8 [Ho, Wo, C]."""
    H = x.shape[0]
    for oy in range(out.shape[0]):
        qdepthwise_row(x, H, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out[oy])
