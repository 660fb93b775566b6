"""The 3x3 depthwise conv, one output row at a time, in two ways.

depthwise_row makes an output row from the three input rows its window reads, held at
once: by the whole-tensor kernels (every row, one operator at a time) and by the
streamed evaluations (rows made only when the next operator needs them, in a 3-row line
buffer). Weights are exactly the slice of channels being computed, a C-contiguous
[3, 3, channels] array.

fold_row goes the other way: it folds one input row into the output rows it belongs to,
as soon as that row exists. At stride 2 an input row feeds at most two output rows, each
half as wide, so two rows of partial sums cost one input row's bytes where a 3-row line
buffer costs three (the row pipeline's stride-2 blocks, pipeline.py). Its sums are made
in depthwise_row's order (bias, then kernel rows 0, 1, 2, each tap left to right, one
rounding per FMA), so they are the same floats.
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH
from .simd import LANES, vclamp, vfma, vload, vrepeat8, vsplat, vstore


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def depthwise_row(e, H, oy, w, b, stride, pad_top, pad_left, lo, hi, out, narrow=True):
    """Output row `oy` of a 3x3 depthwise conv, with the clamp epilogue.

    e [R, W, C] holds input row iy at e[iy % R] (R = H for a whole tensor, 3 for a line
    buffer); H is the input height; w [3, 3, C], b [C]; out [Wo, C]. Positions outside
    [0, H) x [0, W) are the zero padding; the bottom and right padding only show in how
    many output rows and columns the caller asks for.

    Vectorized over 16 channels at a time, the nine weights and the bias in registers,
    four output pixels at a time in the interior (four independent FMA chains, so the
    FMA latency is hidden). A tap on the padding reads the nearest real row or column
    instead and multiplies it by a zero weight, so the edges run the same FMAs with no
    branch per tap. (The rows and columns read are always ones already computed: they
    hold finite values, and the product is exactly 0.)

    narrow=None leaves the 8-channel path (_pairs_interior) out of the compiled code:
    the caller promises C != 8.
    """
    R, W, C = e.shape
    Wo = out.shape[0]
    lo32, hi32 = np.float32(lo), np.float32(hi)
    iy0 = oy * stride - pad_top
    r0, r1, r2 = _nearest(iy0, H) % R, _nearest(iy0 + 1, H) % R, _nearest(iy0 + 2, H) % R
    top, bottom = iy0 >= 0, iy0 + 2 < H
    zero = vsplat(0.0)
    for c in range(0, C, LANES):
        n = min(LANES, C - c)
        bias = vload(b, (c,), n)
        w00, w01, w02 = _tap(w, 0, 0, c, n, top), _tap(w, 0, 1, c, n, top), _tap(w, 0, 2, c, n, top)
        w10, w11, w12 = _tap(w, 1, 0, c, n, True), _tap(w, 1, 1, c, n, True), _tap(w, 1, 2, c, n, True)
        w20, w21, w22 = _tap(w, 2, 0, c, n, bottom), _tap(w, 2, 1, c, n, bottom), _tap(w, 2, 2, c, n, bottom)
        paired, paired_end = pad_left, pad_left  # pixels done two per vector
        if narrow is not None and C == LANES // 2 and stride == 1:
            paired_end = _pairs_interior(e, r0, r1, r2, pad_left, bias, w00, w01, w02, w10, w11, w12,
                                         w20, w21, w22, lo32, hi32, out)
        ox = 0
        while ox < Wo:
            if ox == paired and paired_end > paired:
                ox = paired_end
                continue
            ix = ox * stride - pad_left
            if ix >= 0 and ix + 3 * stride + 2 < W:  # four pixels, all taps inside
                # The stride as a constant: then neighbouring windows share their loads
                # (6 columns for 4 pixels at stride 1, not 12): 1.45x faster, measured.
                if stride == 1:
                    a0, a1, a2, a3 = _interior4(e, r0, r1, r2, ix, 1, c, n, bias,
                                                w00, w01, w02, w10, w11, w12, w20, w21, w22)
                else:
                    a0, a1, a2, a3 = _interior4(e, r0, r1, r2, ix, 2, c, n, bias,
                                                w00, w01, w02, w10, w11, w12, w20, w21, w22)
                vstore(out, (ox, c), n, vclamp(a0, lo32, hi32))
                vstore(out, (ox + 1, c), n, vclamp(a1, lo32, hi32))
                vstore(out, (ox + 2, c), n, vclamp(a2, lo32, hi32))
                vstore(out, (ox + 3, c), n, vclamp(a3, lo32, hi32))
                ox += 4
            else:  # one pixel; its left or right column of taps may be on the padding
                x0, x2 = _nearest(ix, W), _nearest(ix + 2, W)
                left, right = ix >= 0, ix + 2 < W
                x1 = _nearest(ix + 1, W)
                a = vfma(vload(e, (r0, x0, c), n), w00 if left else zero, bias)
                a = vfma(vload(e, (r0, x1, c), n), w01, a)
                a = vfma(vload(e, (r0, x2, c), n), w02 if right else zero, a)
                a = vfma(vload(e, (r1, x0, c), n), w10 if left else zero, a)
                a = vfma(vload(e, (r1, x1, c), n), w11, a)
                a = vfma(vload(e, (r1, x2, c), n), w12 if right else zero, a)
                a = vfma(vload(e, (r2, x0, c), n), w20 if left else zero, a)
                a = vfma(vload(e, (r2, x1, c), n), w21, a)
                a = vfma(vload(e, (r2, x2, c), n), w22 if right else zero, a)
                vstore(out, (ox, c), n, vclamp(a, lo32, hi32))
                ox += 1


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _pairs_interior(e, r0, r1, r2, first, bias, w00, w01, w02, w10, w11, w12, w20, w21, w22, lo, hi, out):
    """Output pixels first, first + 1, ... of 8 channels at stride 1 (the first block's
    slices at t = 4), whose one-pixel vectors would be half empty: a vector holds two
    pixels, and its input is one load (e[r, ix:ix + 2] is 16 consecutive floats).
    Eight pixels (four independent vectors) a step, while every tap is inside the row.
    Returns the end of the pixels done; pixel `first` has its window at column 0."""
    W, Wo = e.shape[1], out.shape[0]
    bias = vrepeat8(bias)
    k00, k01, k02 = vrepeat8(w00), vrepeat8(w01), vrepeat8(w02)
    k10, k11, k12 = vrepeat8(w10), vrepeat8(w11), vrepeat8(w12)
    k20, k21, k22 = vrepeat8(w20), vrepeat8(w21), vrepeat8(w22)
    ox = first
    while ox + 7 < Wo and ox - first + 9 < W:  # pixels ox..ox+7 read columns ix..ix+9
        ix = ox - first
        a0 = a1 = a2 = a3 = bias
        a0, a1, a2, a3 = _pair_taps(e, r0, ix, k00, k01, k02, a0, a1, a2, a3)
        a0, a1, a2, a3 = _pair_taps(e, r1, ix, k10, k11, k12, a0, a1, a2, a3)
        a0, a1, a2, a3 = _pair_taps(e, r2, ix, k20, k21, k22, a0, a1, a2, a3)
        vstore(out, (ox, 0), LANES, vclamp(a0, lo, hi))
        vstore(out, (ox + 2, 0), LANES, vclamp(a1, lo, hi))
        vstore(out, (ox + 4, 0), LANES, vclamp(a2, lo, hi))
        vstore(out, (ox + 6, 0), LANES, vclamp(a3, lo, hi))
        ox += 8
    return ox


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _pair_taps(e, r, ix, k0, k1, k2, a0, a1, a2, a3):
    """One kernel row of the pixel pairs whose windows start at columns ix, ix + 2,
    ix + 4, ix + 6: the vector at column ix + j holds columns ix + j and ix + j + 1,
    which is tap kx of pair m when j = 2m + kx."""
    l0, l1, l2 = vload(e, (r, ix, 0), LANES), vload(e, (r, ix + 1, 0), LANES), vload(e, (r, ix + 2, 0), LANES)
    l3, l4, l5 = vload(e, (r, ix + 3, 0), LANES), vload(e, (r, ix + 4, 0), LANES), vload(e, (r, ix + 5, 0), LANES)
    l6, l7, l8 = vload(e, (r, ix + 6, 0), LANES), vload(e, (r, ix + 7, 0), LANES), vload(e, (r, ix + 8, 0), LANES)
    return (vfma(l2, k2, vfma(l1, k1, vfma(l0, k0, a0))), vfma(l4, k2, vfma(l3, k1, vfma(l2, k0, a1))),
            vfma(l6, k2, vfma(l5, k1, vfma(l4, k0, a2))), vfma(l8, k2, vfma(l7, k1, vfma(l6, k0, a3))))


@njit(cache=True, fastmath=FASTMATH, inline="always")  # inlined so that `stride` is a constant
def _interior4(e, r0, r1, r2, ix, stride, c, n, bias, w00, w01, w02, w10, w11, w12, w20, w21, w22):
    """Four neighbouring output pixels whose windows lie inside the rows r0..r2 of e."""
    a0 = a1 = a2 = a3 = bias
    a0, a1, a2, a3 = _taps4(e, r0, ix, stride, c, n, w00, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r0, ix + 1, stride, c, n, w01, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r0, ix + 2, stride, c, n, w02, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix, stride, c, n, w10, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix + 1, stride, c, n, w11, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r1, ix + 2, stride, c, n, w12, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix, stride, c, n, w20, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix + 1, stride, c, n, w21, a0, a1, a2, a3)
    a0, a1, a2, a3 = _taps4(e, r2, ix + 2, stride, c, n, w22, a0, a1, a2, a3)
    return a0, a1, a2, a3


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _taps4(e, r, ix, stride, c, n, wk, a0, a1, a2, a3):
    """One tap of four neighbouring output pixels: a_i += e[r, ix + i * stride, c:c + n] * wk."""
    return (vfma(vload(e, (r, ix, c), n), wk, a0),
            vfma(vload(e, (r, ix + stride, c), n), wk, a1),
            vfma(vload(e, (r, ix + 2 * stride, c), n), wk, a2),
            vfma(vload(e, (r, ix + 3 * stride, c), n), wk, a3))


@njit(cache=True)
def _nearest(i, size):
    """The index in [0, size) nearest to i."""
    return min(max(i, 0), size - 1)


@njit(cache=True, fastmath=FASTMATH, inline="always")  # inlined: one compile, not one per tap
def _tap(w, ky, kx, c, n, inside):
    """Weights w[ky, kx, c:c + n] as a vector, or zeros when that tap is on the padding."""
    return vload(w, (ky, kx, c), n if inside else 0)


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
