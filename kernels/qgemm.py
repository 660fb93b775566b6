"""The int8 1x1 conv, exactly as TFLite's reference kernels compute it: every expansion,
projection, the head conv and the classifier of a quantized MobileNetV2.

    out[p, c] = to_8bit(bias[c] + sum_k (x[p, k] - x_zero) * (w[k, c] - w_zero),
                        mult[c], shift[c], y_zero, lo, hi)

The sum is regrouped so that its inner product multiplies raw bytes (int32 arithmetic
wraps, so any regrouping gives the same int32):

    sum_k (x - xz)(w - wz) = sum_k x u  -  (128 + wz) sum_k x  -  xz sum_k w  +  K xz wz

with u = w + 128, the weights as unsigned bytes: the product of unsigned weights and
signed activations is vpdpbusd's (AVX-512 VNNI), 64 multiply-adds per instruction with
x's four bytes broadcast from memory. `sum_k w` is per column (colsum, from the
packing), `sum_k x` per pixel (summed by the tile before its loop).

Packing (pack_qweights): u as [ceil(C / PANEL), ceil(K / 4), 4 * PANEL] bytes: per panel
of PANEL output channels and per group of 4 inputs, 64 bytes for each 16 channels, the
4 inputs of a channel adjacent (vpdpbusd's lane). Inputs past K and channels past C are
0, which adds nothing whatever x holds. A tile reads its panel as one stream. colsum is
int32 [ceil(K / 16), C]: row r is sum_{16r <= k < 16r + 16} w[k, c].

K-ranges (the sliced evaluation, qpointwise_acc): the inputs k0..k1 with k0 a multiple
of 16 and k1 a multiple of 16 or K are `packed[:, k0 // 4 : -(-k1 // 4)]` and
`colsum[k0 // 16 : -(-k1 // 16)]`, views both, with x [P, k1 - k0].
"""
import numpy as np
from numba import njit

from .qsimd import LANES, bstore, iadd, iload, imul, isplat, istore, quad, vdot, vrequant, wload
from .target import current

GROUP = 4  # inputs per lane of a packed vector
SUM_BLOCK = 16  # inputs per row of colsum: the granularity of a K-range
WIDE = current().int_dot == "avx512vnni"  # 4-vector tiles: the registers hold 6 x 4 accumulators
PANEL = 4 * LANES if WIDE else LANES  # channels per panel
PIXELS = 6  # pixels per tile


class QuantizedGemmError(ValueError):
    """Weights, activations or buffers the int8 1x1 conv cannot take."""


def pack_qweights(w, w_zero):
    """(packed, colsum) of int8 weights w [K, C] for qpointwise (layout in the module's
    docstring); w_zero, the weights' zero point, is checked here and given again to the
    kernels, which fold it per call."""
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2 or 0 in w.shape:
        raise QuantizedGemmError(f"weights must be a non-empty int8 [K, C] array, got {w.dtype} {w.shape}")
    if not (isinstance(w_zero, (int, np.integer)) and -128 <= int(w_zero) <= 127):
        raise QuantizedGemmError(f"the weights' zero point must be an integer in -128..127, got {w_zero!r}")
    return _pack(np.ascontiguousarray(w))


@njit(cache=True)
def _pack(w):
    K, C = w.shape
    packed = np.zeros((-(-C // PANEL), -(-K // GROUP), GROUP * PANEL), np.uint8)
    colsum = np.zeros((-(-K // SUM_BLOCK), C), np.int32)
    for k in range(K):
        for c in range(C):
            packed[c // PANEL, k // GROUP, (c % PANEL) * GROUP + k % GROUP] = np.uint8(np.int32(w[k, c]) + 128)
            colsum[k // SUM_BLOCK, c] += w[k, c]
    return packed, colsum


@njit(cache=True, nogil=True)
def qpointwise(x, packed, colsum, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi, out):
    """out int8 [P, C] = the requantized 1x1 conv of x int8 [P, K] (module docstring)."""
    P, C = out.shape
    _check(x, packed, colsum, P, C)
    if bias.shape[0] != C or mult.shape[0] != C or shift.shape[0] != C:
        raise QuantizedGemmError("bias, mult and shift need one entry per output channel")
    _qgemm(x, packed, colsum, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi, out, colsum[:0], False, C)


@njit(cache=True, nogil=True)
def qpointwise_acc(x, packed, colsum, x_zero, w_zero, acc):
    """acc int32 [P, C] += sum_k (x[p, k] - x_zero) * (w[k, c] - w_zero), wrapping as int32:
    one K-range of a sliced 1x1 conv (module docstring)."""
    P, C = acc.shape
    _check(x, packed, colsum, P, C)
    none = colsum[0, :0]
    _qgemm(x, packed, colsum, none, none, none, x_zero, w_zero, 0, 0, 0, x[:0], acc, True, C)


@njit(cache=True, inline="always")
def _check(x, packed, colsum, P, C):
    K = x.shape[1]
    if x.shape[0] != P or K == 0:
        raise QuantizedGemmError("x must be [P, K] with the output's P pixels and K >= 1")
    if packed.shape[0] * PANEL < C or packed.shape[2] != GROUP * PANEL or packed.shape[1] != -(-K // GROUP):
        raise QuantizedGemmError("packed weights do not match x's inputs or the output's channels")
    if colsum.shape[0] != -(-K // SUM_BLOCK) or colsum.shape[1] != C:
        raise QuantizedGemmError("colsum does not match x's inputs or the output's channels")
    if K > 1 and x.strides[1] != 1:
        raise QuantizedGemmError("x's rows must be contiguous")


@njit(cache=True, nogil=True, _nrt=False)
def _qgemm(x, packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, out, acc, accumulate, C):
    P = x.shape[0]
    for i in range(packed.shape[0]):
        c = i * PANEL
        live = min(PANEL, C - c)
        if WIDE and live > 2 * LANES:
            n0, n1, n2, n3 = _lanes(live, 0), _lanes(live, 1), _lanes(live, 2), _lanes(live, 3)
            k0 = _constant(colsum, bias, c, n0, xz, wz, x.shape[1], accumulate)
            k1 = _constant(colsum, bias, c + LANES, n1, xz, wz, x.shape[1], accumulate)
            k2 = _constant(colsum, bias, c + 2 * LANES, n2, xz, wz, x.shape[1], accumulate)
            k3 = _constant(colsum, bias, c + 3 * LANES, n3, xz, wz, x.shape[1], accumulate)
            for p in range(0, P, PIXELS):
                _tile4(x, packed, i, p, c, n0, n1, n2, n3, k0, k1, k2, k3,
                       mult, shift, wz, yz, lo, hi, out, acc, accumulate)
        else:
            for v in range(0, live, LANES):
                n = min(LANES, live - v)
                k = _constant(colsum, bias, c + v, n, xz, wz, x.shape[1], accumulate)
                for p in range(0, P, PIXELS):
                    _tile1(x, packed, i, v, p, c + v, n, k, mult, shift, wz, yz, lo, hi, out, acc, accumulate)


@njit(cache=True, inline="always")
def _lanes(live, v):
    """Live lanes of vector v of a panel with `live` channels (0 for a vector past them)."""
    return min(max(live - v * LANES, 0), LANES)


@njit(cache=True, _nrt=False)
def _constant(colsum, bias, c, n, xz, wz, K, accumulate):
    """The per-channel part of the sum, for channels c..c+n-1: bias - xz sum_k w + K xz wz
    (no bias when accumulating)."""
    s = isplat(0)
    for r in range(colsum.shape[0]):
        s = iadd(s, iload(colsum, (r, c), n))
    k = iadd(imul(s, isplat(-xz)), isplat(np.int64(K) * xz * wz))
    if not accumulate:
        k = iadd(k, iload(bias, (c,), n))
    return k


@njit(cache=True, inline="always")
def _row_term(x, p, wz):
    """The per-pixel part of the sum: -(128 + wz) sum_k x[p, k], wrapped to int32."""
    s = np.int32(0)
    for k in range(x.shape[1]):
        s += np.int32(x[p, k])
    return np.int32(np.int64(s) * -(128 + np.int64(wz)))


@njit(cache=True, inline="always")
def _tail_quad(x, p, k):
    """The bytes x[p, k:K] (fewer than 4) as one int32, zeros past K: nothing past the row
    is read."""
    q = 0
    for j in range(x.shape[1] - k):
        q |= (np.int32(x[p, k + j]) & 0xFF) << (8 * j)
    return np.int32(q)


@njit(cache=True, inline="always")
def _finish(a, k, row, p, c, n, mult, shift, yz, lo, hi, out, acc, accumulate):
    """Pixel p's sums a (channels c..c+n-1) with the channel and pixel parts added:
    requantized (by the vectors mult, shift) into out, or added into acc."""
    if n <= 0:
        return
    a = iadd(iadd(a, k), isplat(row))
    if accumulate:
        istore(acc, (p, c), n, iadd(a, iload(acc, (p, c), n)))
    else:
        bstore(out, (p, c), n, vrequant(a, mult, shift, yz, lo, hi))


@njit(cache=True, inline="always")
def _scales(mult, shift, c, n, accumulate):
    """The requantization's vectors of channels c..c+n-1 (zeros when accumulating)."""
    if accumulate or n <= 0:
        return isplat(0), isplat(0)
    return iload(mult, (c,), n), iload(shift, (c,), n)


@njit(cache=True, _nrt=False)
def _tile4(x, packed, i, p, c, n0, n1, n2, n3, k0, k1, k2, k3, mult, shift, wz, yz, lo, hi, out, acc, accumulate):
    """Pixels p..p+5 x the 64 channels of panel i (from c; n0..n3 live lanes per vector):
    24 accumulators, 4 weight vectors, x's 4 bytes broadcast into each vpdpbusd."""
    P, K = x.shape
    q = P - 1
    p0, p1, p2, p3, p4, p5 = p, min(p + 1, q), min(p + 2, q), min(p + 3, q), min(p + 4, q), min(p + 5, q)
    z = isplat(0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = z
    a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = z
    groups = K // GROUP
    for g in range(groups):
        k = g * GROUP
        w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
        w2, w3 = wload(packed, (i, g, 128)), wload(packed, (i, g, 192))
        x0 = quad(x, (p0, k))
        a00, a01, a02, a03 = vdot(a00, w0, x0), vdot(a01, w1, x0), vdot(a02, w2, x0), vdot(a03, w3, x0)
        x1 = quad(x, (p1, k))
        a10, a11, a12, a13 = vdot(a10, w0, x1), vdot(a11, w1, x1), vdot(a12, w2, x1), vdot(a13, w3, x1)
        x2 = quad(x, (p2, k))
        a20, a21, a22, a23 = vdot(a20, w0, x2), vdot(a21, w1, x2), vdot(a22, w2, x2), vdot(a23, w3, x2)
        x3 = quad(x, (p3, k))
        a30, a31, a32, a33 = vdot(a30, w0, x3), vdot(a31, w1, x3), vdot(a32, w2, x3), vdot(a33, w3, x3)
        x4 = quad(x, (p4, k))
        a40, a41, a42, a43 = vdot(a40, w0, x4), vdot(a41, w1, x4), vdot(a42, w2, x4), vdot(a43, w3, x4)
        x5 = quad(x, (p5, k))
        a50, a51, a52, a53 = vdot(a50, w0, x5), vdot(a51, w1, x5), vdot(a52, w2, x5), vdot(a53, w3, x5)
    if K % GROUP:  # the last inputs, fewer than 4: nothing past the row is read
        g, k = groups, groups * GROUP
        w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
        w2, w3 = wload(packed, (i, g, 128)), wload(packed, (i, g, 192))
        x0, x1, x2 = _tail_quad(x, p0, k), _tail_quad(x, p1, k), _tail_quad(x, p2, k)
        x3, x4, x5 = _tail_quad(x, p3, k), _tail_quad(x, p4, k), _tail_quad(x, p5, k)
        a00, a01, a02, a03 = vdot(a00, w0, x0), vdot(a01, w1, x0), vdot(a02, w2, x0), vdot(a03, w3, x0)
        a10, a11, a12, a13 = vdot(a10, w0, x1), vdot(a11, w1, x1), vdot(a12, w2, x1), vdot(a13, w3, x1)
        a20, a21, a22, a23 = vdot(a20, w0, x2), vdot(a21, w1, x2), vdot(a22, w2, x2), vdot(a23, w3, x2)
        a30, a31, a32, a33 = vdot(a30, w0, x3), vdot(a31, w1, x3), vdot(a32, w2, x3), vdot(a33, w3, x3)
        a40, a41, a42, a43 = vdot(a40, w0, x4), vdot(a41, w1, x4), vdot(a42, w2, x4), vdot(a43, w3, x4)
        a50, a51, a52, a53 = vdot(a50, w0, x5), vdot(a51, w1, x5), vdot(a52, w2, x5), vdot(a53, w3, x5)
    m0, s0 = _scales(mult, shift, c, n0, accumulate)
    m1, s1 = _scales(mult, shift, c + LANES, n1, accumulate)
    m2, s2 = _scales(mult, shift, c + 2 * LANES, n2, accumulate)
    m3, s3 = _scales(mult, shift, c + 3 * LANES, n3, accumulate)
    for j, a0, a1, a2, a3 in ((0, a00, a01, a02, a03), (1, a10, a11, a12, a13), (2, a20, a21, a22, a23),
                              (3, a30, a31, a32, a33), (4, a40, a41, a42, a43), (5, a50, a51, a52, a53)):
        pj = p + j
        if pj < P:  # pixels past P (a tile's padding) are dropped
            row = _row_term(x, pj, wz)
            _finish(a0, k0, row, pj, c, n0, m0, s0, yz, lo, hi, out, acc, accumulate)
            _finish(a1, k1, row, pj, c + LANES, n1, m1, s1, yz, lo, hi, out, acc, accumulate)
            _finish(a2, k2, row, pj, c + 2 * LANES, n2, m2, s2, yz, lo, hi, out, acc, accumulate)
            _finish(a3, k3, row, pj, c + 3 * LANES, n3, m3, s3, yz, lo, hi, out, acc, accumulate)


@njit(cache=True, _nrt=False)
def _tile1(x, packed, i, v, p, c, n, kc, mult, shift, wz, yz, lo, hi, out, acc, accumulate):
    """Pixels p..p+5 x the 16 channels from vector v of panel i (n live lanes)."""
    P, K = x.shape
    q = P - 1
    p0, p1, p2, p3, p4, p5 = p, min(p + 1, q), min(p + 2, q), min(p + 3, q), min(p + 4, q), min(p + 5, q)
    a0 = a1 = a2 = a3 = a4 = a5 = isplat(0)
    groups = K // GROUP
    off = v * GROUP
    for g in range(groups):
        w = wload(packed, (i, g, off))
        k = g * GROUP
        a0, a1, a2 = vdot(a0, w, quad(x, (p0, k))), vdot(a1, w, quad(x, (p1, k))), vdot(a2, w, quad(x, (p2, k)))
        a3, a4, a5 = vdot(a3, w, quad(x, (p3, k))), vdot(a4, w, quad(x, (p4, k))), vdot(a5, w, quad(x, (p5, k)))
    if K % GROUP:  # the last inputs, fewer than 4: nothing past the row is read
        w, k = wload(packed, (i, groups, off)), groups * GROUP
        a0, a1, a2 = vdot(a0, w, _tail_quad(x, p0, k)), vdot(a1, w, _tail_quad(x, p1, k)), vdot(a2, w, _tail_quad(x, p2, k))
        a3, a4, a5 = vdot(a3, w, _tail_quad(x, p3, k)), vdot(a4, w, _tail_quad(x, p4, k)), vdot(a5, w, _tail_quad(x, p5, k))
    m, s = _scales(mult, shift, c, n, accumulate)
    for j, a in ((0, a0), (1, a1), (2, a2), (3, a3), (4, a4), (5, a5)):
        pj = p + j
        if pj < P:  # pixels past P (a tile's padding) are dropped
            _finish(a, kc, _row_term(x, pj, wz), pj, c, n, m, s, yz, lo, hi, out, acc, accumulate)
