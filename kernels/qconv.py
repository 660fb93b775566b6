"""The int8 stem: TFLite's full 3x3 conv over an RGB image, exactly, one output row at a time.

acc[c] = bias[c] + sum over the window's in-image taps and the 3 input channels of
(x - x_zero) * (w - w_zero) in int32, requantized per channel.

A kernel row of a window is 9 consecutive bytes of an image row (3 pixels x RGB), taps
t = 3 kx + ci. They go in pairs (t = 2p, 2p + 1; the 10th is a zero tap): one 16-bit
multiply of pairs (pdot: vpdpwssd with VNNI, pmaddwd elsewhere) adds two taps into 16
channels. The weights are packed as those pairs (pack_qconv3x3); the inputs are one
16-byte load per kernel row, widened to 16-bit and centered, each pair broadcast to all
lanes. A window that reaches the padding or the row's last 16 bytes builds its pairs
one value at a time, zeros on the padding.
"""
import numpy as np
from numba import njit

from .qdepthwise import _nearest
from .qsimd import LANES, bstore, ilane, iload, isplat, pdot, vrequant32, xpairs16

CIN = 3  # input channels: the stem reads RGB
PAIRS = 5  # pairs of taps per kernel row: 9 taps and a zero one


@njit(cache=True, nogil=True)
def pack_qconv3x3(w, w_zero):
    """w int8 [3, 3, 3, C] (HWIO) and its zero point -> int32 [3, PAIRS, C]: for kernel row
    ky and pair p, w - w_zero of taps 2p (low 16 bits) and 2p + 1 (high 16 bits), tap
    t = 3 kx + ci; tap 9 is zero."""
    if w.shape[0] != 3 or w.shape[1] != 3 or w.shape[2] != CIN:
        raise ValueError("the stem's weights must be [3, 3, 3, C] (HWIO)")
    C = w.shape[3]
    wp = np.zeros((3, PAIRS, C), np.int32)
    for ky in range(3):
        for t in range(3 * CIN):
            for c in range(C):
                v = np.int32(w[ky, t // CIN, t % CIN, c]) - np.int32(w_zero)
                if t % 2 == 0:
                    wp[ky, t // 2, c] |= v & 0xFFFF
                else:
                    wp[ky, t // 2, c] |= v << 16
    return wp


@njit(cache=True, inline="always")
def _row_pairs(x, r, ix, xz):
    """The 5 pairs of a kernel row whose window lies inside the image, each broadcast."""
    v = xpairs16(x, (r, ix, 0), xz)
    return ilane(v, 0), ilane(v, 1), ilane(v, 2), ilane(v, 3), ilane(v, 4)


@njit(cache=True, inline="always")
def _tap(x, r, ix, t, H, W, xz):
    """Tap t of the kernel row on image row r, as x - x_zero; 0 on the padding or t = 9."""
    col = ix + t // CIN
    if t >= 3 * CIN or r < 0 or r >= H or col < 0 or col >= W:
        return np.int32(0)
    return np.int32(x[r, col, t % CIN]) - xz


@njit(cache=True, inline="always")
def _pair(x, r, ix, p, H, W, xz):
    """Pair p of the kernel row on image row r, one value at a time, broadcast."""
    lo = _tap(x, r, ix, 2 * p, H, W, xz)
    hi = _tap(x, r, ix, 2 * p + 1, H, W, xz)
    return isplat((lo & 0xFFFF) | (hi << 16))


@njit(cache=True, _nrt=False)  # a call: only the edge pixels take it, and inlined it was 3 s of compile
def _row_pairs_edge(x, r, ix, H, W, xz):
    """_row_pairs where the window meets the padding, a tap at a time."""
    return (_pair(x, r, ix, 0, H, W, xz), _pair(x, r, ix, 1, H, W, xz), _pair(x, r, ix, 2, H, W, xz),
            _pair(x, r, ix, 3, H, W, xz), _pair(x, r, ix, 4, H, W, xz))


@njit(cache=True, inline="always")
def _kernel_row(wp, ky, c, n, q0, q1, q2, q3, q4, acc):
    acc = pdot(acc, q0, iload(wp, (ky, 0, c), n))
    acc = pdot(acc, q1, iload(wp, (ky, 1, c), n))
    acc = pdot(acc, q2, iload(wp, (ky, 2, c), n))
    acc = pdot(acc, q3, iload(wp, (ky, 3, c), n))
    return pdot(acc, q4, iload(wp, (ky, 4, c), n))


@njit(cache=True, inline="always")
def _block(wp, bias, mult, shift, y_zero, lo, hi, out, ox, c, n, p0, p1, p2):
    """Channels c..c+n-1 of one output pixel from its three kernel rows' pairs."""
    acc = iload(bias, (c,), n)
    acc = _kernel_row(wp, 0, c, n, p0[0], p0[1], p0[2], p0[3], p0[4], acc)
    acc = _kernel_row(wp, 1, c, n, p1[0], p1[1], p1[2], p1[3], p1[4], acc)
    acc = _kernel_row(wp, 2, c, n, p2[0], p2[1], p2[2], p2[3], p2[4], acc)
    bstore(out, (ox, c), n, vrequant32(acc, iload(mult, (c,), n), iload(shift, (c,), n), y_zero, lo, hi))


@njit(cache=True, inline="always")
def _pixel(wp, bias, mult, shift, y_zero, lo, hi, out, ox, C, p0, p1, p2):
    """All channels of one output pixel: whole vectors (a constant lane count: no
    branch in their loads), then the rest."""
    whole = C - C % LANES
    for c in range(0, whole, LANES):
        _block(wp, bias, mult, shift, y_zero, lo, hi, out, ox, c, LANES, p0, p1, p2)
    if whole < C:
        _block(wp, bias, mult, shift, y_zero, lo, hi, out, ox, whole, C - whole, p0, p1, p2)


@njit(cache=True, nogil=True, _nrt=False)
def qconv3x3_row(x, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """Output row `oy` of the stem (packed weights: no w_zero argument).

    x int8 [H, W, 3]; wc = pack_qconv3x3(w, w_zero); bias, mult, shift int32 [C];
    out int8 [Wo, C].
    """
    H, W, cin = x.shape
    if cin != CIN:
        raise ValueError("the stem reads 3 input channels")
    Wo, C = out.shape
    xz = np.int32(x_zero)
    iy = oy * stride - pad_top
    rows_inside = iy >= 0 and iy + 2 < H
    for ox in range(Wo):
        ix = ox * stride - pad_left
        # inside: the window, and the 16 bytes each kernel row's load reads
        if rows_inside and ix >= 0 and CIN * ix + 16 <= CIN * W:
            _pixel(wc, bias, mult, shift, y_zero, lo, hi, out, ox, C, _row_pairs(x, iy, ix, xz),
                   _row_pairs(x, iy + 1, ix, xz), _row_pairs(x, iy + 2, ix, xz))
        else:
            _pixel(wc, bias, mult, shift, y_zero, lo, hi, out, ox, C, _row_pairs_edge(x, iy, ix, H, W, xz),
                   _row_pairs_edge(x, iy + 1, ix, H, W, xz), _row_pairs_edge(x, iy + 2, ix, H, W, xz))


@njit(cache=True, nogil=True)
def qconv3x3(x, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """The whole image, row by row: x int8 [H, W, 3] -> out int8 [Ho, Wo, C]."""
    for oy in range(out.shape[0]):
        qconv3x3_row(x, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out[oy])
