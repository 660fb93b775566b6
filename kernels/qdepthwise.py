"""The int8 3x3 depthwise conv, exactly as TFLite's reference kernel, one output row at a time.

acc[c] = bias[c] + sum over the window's in-image taps of (x - x_zero) * (w - w_zero), in
int32, then requantized per channel (requant.to_8bit). A tap on the padding adds nothing.

The weights come centered and padded by pack_qdepthwise: wc[ky, kx] = w[ky, kx] - w_zero as
int16, and wc[3, :] = wc[:, 3] = 0. A tap on the padding reads the nearest real row or
column and takes a zero weight, so the edges run the same multiply-adds with no branch
per tap. (x - x_zero and w - w_zero each fit 9 bits, their product 17: int32 lanes.)

Explicit vectors (qsimd.py), as the float depthwise.py: 16 channels at a time, the nine
weights in registers, four output pixels at a time in the interior, each accumulator in
a register across the nine taps. In the interior the input's zero point is folded into
the bias, bias - x_zero * sum(w) (int32 wraps, so the regrouping is exact), and a tap is
one widening load and one 16-bit multiply-add (qsimd.vmadd16: vpdpwssd with VNNI).
"""
import numpy as np
from numba import njit

from .qsimd import LANES, bstore, iadd, iload, imul, isplat, isub, low16, vbounds, vmadd16, vrequant_with, vscales, xload

ZERO_TAP = 3  # the index of the zero row and column of packed weights
BLOCK = LANES  # channels per vector


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
def _taps4(e, r, ix, stride, c, wk, a0, a1, a2, a3):
    """One tap of four neighbouring output pixels: a_i += e[r, ix + i * stride, c:c + 16] * wk."""
    return (vmadd16(a0, xload(e, (r, ix, c), LANES), wk),
            vmadd16(a1, xload(e, (r, ix + stride, c), LANES), wk),
            vmadd16(a2, xload(e, (r, ix + 2 * stride, c), LANES), wk),
            vmadd16(a3, xload(e, (r, ix + 3 * stride, c), LANES), wk))


@njit(cache=True, inline="always")  # inlined so that `stride` is a constant: shared loads
def _interior4(e, r0, r1, r2, ix, stride, c, bias, w00, w01, w02, w10, w11, w12, w20, w21, w22):
    """Four neighbouring output pixels whose windows lie inside the row (16 channels;
    bias has the input's zero point folded in)."""
    a0 = a1 = a2 = a3 = bias
    a0, a1, a2, a3 = _taps4(e, r0, ix, stride, c, w00, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r0, ix + 1, stride, c, w01, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r0, ix + 2, stride, c, w02, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix, stride, c, w10, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix + 1, stride, c, w11, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix + 2, stride, c, w12, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix, stride, c, w20, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix + 1, stride, c, w21, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix + 2, stride, c, w22, a0, a1, a2, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _tap(e, r, x, c, n, xz, wk, a):
    """a + (e[r, x, c:c + n] - x_zero) * wk."""
    return vmadd16(a, isub(xload(e, (r, x, c), n), xz), wk)


@njit(cache=True, nogil=True, _nrt=False)
def qdepthwise_row(e, H, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """Output row `oy` of an int8 3x3 depthwise conv (packed weights: no w_zero argument).

    e int8 [R, W, C] holds input row iy at e[iy % R] (R = H for a whole image, 3 for a line
    buffer); H is the input height; wc = pack_qdepthwise(w, w_zero); bias, mult, shift int32
    [C]; out int8 [Wo, C]. The bottom and right padding only show in how many output rows
    and columns the caller asks for.
    """
    R, W, C = e.shape
    Wo = out.shape[0]
    iy = oy * stride - pad_top
    r0, r1, r2 = _nearest(iy, H) % R, _nearest(iy + 1, H) % R, _nearest(iy + 2, H) % R
    k0, k1, k2 = _weight_index(iy, 0, H), _weight_index(iy, 1, H), _weight_index(iy, 2, H)
    xz, zero = isplat(x_zero), isplat(0)
    bounds = vbounds(y_zero, lo, hi)
    for c in range(0, C, LANES):
        n = min(LANES, C - c)
        w00, w01, w02 = xload(wc, (k0, 0, c), n), xload(wc, (k0, 1, c), n), xload(wc, (k0, 2, c), n)
        w10, w11, w12 = xload(wc, (k1, 0, c), n), xload(wc, (k1, 1, c), n), xload(wc, (k1, 2, c), n)
        w20, w21, w22 = xload(wc, (k2, 0, c), n), xload(wc, (k2, 1, c), n), xload(wc, (k2, 2, c), n)
        b = iload(bias, (c,), n)
        scales = vscales(iload(mult, (c,), n), iload(shift, (c,), n))
        total = iadd(iadd(iadd(w00, w01), iadd(w02, w10)), iadd(iadd(w11, w12), iadd(w20, iadd(w21, w22))))
        folded = isub(b, imul(xz, total))  # bias - x_zero * sum(w): for windows inside the row
        w00, w01, w02, w10, w11, w12 = low16(w00), low16(w01), low16(w02), low16(w10), low16(w11), low16(w12)
        w20, w21, w22 = low16(w20), low16(w21), low16(w22)  # vmadd16's operands
        ox = 0
        while ox < Wo:
            ix = ox * stride - pad_left
            if n == LANES and ix >= 0 and ix + 3 * stride + 2 < W:  # four pixels, all taps inside
                if stride == 1:
                    a0, a1, a2, a3 = _interior4(e, r0, r1, r2, ix, 1, c, folded,
                                                w00, w01, w02, w10, w11, w12, w20, w21, w22)
                else:
                    a0, a1, a2, a3 = _interior4(e, r0, r1, r2, ix, 2, c, folded,
                                                w00, w01, w02, w10, w11, w12, w20, w21, w22)
                bstore(out, (ox, c), LANES, vrequant_with(a0, scales, bounds))
                bstore(out, (ox + 1, c), LANES, vrequant_with(a1, scales, bounds))
                bstore(out, (ox + 2, c), LANES, vrequant_with(a2, scales, bounds))
                bstore(out, (ox + 3, c), LANES, vrequant_with(a3, scales, bounds))
                ox += 4
            else:  # one pixel; its left or right column of taps may be on the padding
                x0, x1, x2 = _nearest(ix, W), _nearest(ix + 1, W), _nearest(ix + 2, W)
                left, right = ix >= 0, ix + 2 < W
                a = _tap(e, r0, x0, c, n, xz, w00 if left else zero, b)
                a = _tap(e, r0, x1, c, n, xz, w01, a)
                a = _tap(e, r0, x2, c, n, xz, w02 if right else zero, a)
                a = _tap(e, r1, x0, c, n, xz, w10 if left else zero, a)
                a = _tap(e, r1, x1, c, n, xz, w11, a)
                a = _tap(e, r1, x2, c, n, xz, w12 if right else zero, a)
                a = _tap(e, r2, x0, c, n, xz, w20 if left else zero, a)
                a = _tap(e, r2, x1, c, n, xz, w21, a)
                a = _tap(e, r2, x2, c, n, xz, w22 if right else zero, a)
                bstore(out, (ox, c), n, vrequant_with(a, scales, bounds))
                ox += 1


@njit(cache=True, nogil=True)
def qdepthwise3x3(x, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out):
    """The whole image, row by row: x int8 [H, W, C] -> out int8 [Ho, Wo, C]."""
    H = x.shape[0]
    for oy in range(out.shape[0]):
        qdepthwise_row(x, H, oy, wc, bias, mult, shift, x_zero, y_zero, lo, hi, stride, pad_top, pad_left, out[oy])
