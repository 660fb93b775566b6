"""The int8 stem: TFLite's full 3x3 conv over an RGB image, exactly, one output row at a time.

acc[c] = bias[c] + sum over the window's in-image taps and the 3 input channels of
(x - x_zero) * (w - w_zero) in int32, requantized per channel. As in qdepthwise.py the
weights come centered and padded (pack_qconv3x3): a tap on the padding reads the nearest
real pixel and takes a zero weight, so the loop over output channels has no branch.
"""
import numpy as np
from numba import njit

from .qdepthwise import BLOCK, ZERO_TAP, _nearest, _weight_index
from .qlanes import to_8bit_lanes

CIN = 3  # input channels: the stem reads RGB


@njit(cache=True, nogil=True)
def pack_qconv3x3(w, w_zero):
    """w int8 [3, 3, 3, C] (HWIO) and its zero point -> int16 [4, 4, 3, C]: w - w_zero, and
    zeros at kernel row or column 3 (ZERO_TAP)."""
    if w.shape[0] != 3 or w.shape[1] != 3 or w.shape[2] != CIN:
        raise ValueError("the stem's weights must be [3, 3, 3, C] (HWIO)")
    C = w.shape[3]
    wc = np.zeros((4, 4, CIN, C), np.int16)
    for ky in range(3):
        for kx in range(3):
            for ci in range(CIN):
                for c in range(C):
                    wc[ky, kx, ci, c] = np.int16(w[ky, kx, ci, c]) - np.int16(w_zero)
    return wc


@njit(cache=True, inline="always")
def _kernel_row(x, r, x0, x1, x2, wc, k, j0, j1, j2, xz, c):
    """One kernel row's nine products for output channel c (the inputs are scalars the
    loop over c does not change)."""
    s = (np.int32(x[r, x0, 0]) - xz) * np.int32(wc[k, j0, 0, c])
    s += (np.int32(x[r, x0, 1]) - xz) * np.int32(wc[k, j0, 1, c])
    s += (np.int32(x[r, x0, 2]) - xz) * np.int32(wc[k, j0, 2, c])
    s += (np.int32(x[r, x1, 0]) - xz) * np.int32(wc[k, j1, 0, c])
    s += (np.int32(x[r, x1, 1]) - xz) * np.int32(wc[k, j1, 1, c])
    s += (np.int32(x[r, x1, 2]) - xz) * np.int32(wc[k, j1, 2, c])
    s += (np.int32(x[r, x2, 0]) - xz) * np.int32(wc[k, j2, 0, c])
    s += (np.int32(x[r, x2, 1]) - xz) * np.int32(wc[k, j2, 1, c])
    s += (np.int32(x[r, x2, 2]) - xz) * np.int32(wc[k, j2, 2, c])
    return np.int32(s)  # nine 17-bit products: no wrap


@njit(cache=True, inline="always")
def _channel(x, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2, bias, mult, shift, xz, y_zero, lo, hi, c):
    acc = np.int32(bias[c])
    acc = np.int32(acc + _kernel_row(x, r0, x0, x1, x2, wc, k0, j0, j1, j2, xz, c))
    acc = np.int32(acc + _kernel_row(x, r1, x0, x1, x2, wc, k1, j0, j1, j2, xz, c))
    acc = np.int32(acc + _kernel_row(x, r2, x0, x1, x2, wc, k2, j0, j1, j2, xz, c))
    return to_8bit_lanes(acc, mult[c], shift[c], y_zero, lo, hi)


@njit(cache=True, nogil=True)
def qconv3x3_row(x, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """Output row `oy` of the stem (packed weights: no w_zero argument).

    x int8 [H, W, 3]; wc = pack_qconv3x3(w, w_zero); bias, mult, shift int32 [C];
    out int8 [Wo, C]. Channels in vectorized blocks of BLOCK, then the rest.
    """
    H, W, cin = x.shape
    if cin != CIN:
        raise ValueError("the stem reads 3 input channels")
    Wo, C = out.shape
    xz = np.int32(x_zero)
    iy = oy * stride - pad_top
    r0, r1, r2 = _nearest(iy, H), _nearest(iy + 1, H), _nearest(iy + 2, H)
    k0, k1, k2 = _weight_index(iy, 0, H), _weight_index(iy, 1, H), _weight_index(iy, 2, H)
    blocked = C - C % BLOCK
    for ox in range(Wo):
        ix = ox * stride - pad_left
        x0, x1, x2 = _nearest(ix, W), _nearest(ix + 1, W), _nearest(ix + 2, W)
        j0, j1, j2 = _weight_index(ix, 0, W), _weight_index(ix, 1, W), _weight_index(ix, 2, W)
        for c0 in range(0, blocked, BLOCK):
            for c in range(c0, c0 + BLOCK):
                out[ox, c] = _channel(x, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2,
                                      bias, mult, shift, xz, y_zero, lo, hi, c)
        for c in range(blocked, C):
            out[ox, c] = _channel(x, r0, r1, r2, x0, x1, x2, wc, k0, k1, k2, j0, j1, j2,
                                  bias, mult, shift, xz, y_zero, lo, hi, c)


@njit(cache=True, nogil=True)
def qconv3x3(x, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """The whole image, row by row: x int8 [H, W, 3] -> out int8 [Ho, Wo, C]."""
    for oy in range(out.shape[0]):
        qconv3x3_row(x, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out[oy])
