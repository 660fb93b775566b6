"""The int8 1x1 conv, exactly as TFLite's reference kernels compute it: every expansion,
projection, the head conv and the classifier of a quantized MobileNetV2.

    out[p, c] = to_8bit(bias[c] + sum_k (x[p, k] - x_zero) * (w[k, c] - w_zero),
                        mult[c], shift[c], y_zero, lo, hi)

The sum is regrouped so that its inner product multiplies raw bytes (int32 arithmetic
wraps, so any regrouping gives the same int32):

    sum_k (x - xz)(w - wz) = sum_k (x + 128) w  -  (128 + xz) sum_k w  -  wz sum_k x  +  K xz wz

with x + 128 = x with its sign bit flipped, x's bytes as unsigned: the product of
unsigned activations and signed weights is vpdpbusd's (AVX-512 VNNI), 64 multiply-adds
per instruction with x's four bytes broadcast. `sum_k w` is per column (colsum, from the
packing, folded into one constant per channel); `sum_k x` per pixel, needed only when
the weights have a zero point (the uint8 file's; the int8 file's weights have none).

Tiles: 6 pixels x 4, 2 or 1 vectors of 16 channels, the narrowest that the panel's live
channels fit (a 96-channel layer is a 6 x 4 and a 6 x 2 tile; 48 live channels take the
4-vector tile, its last vector's weights zero). The requantization's
per-channel vectors (qsimd.vscales) are made once per panel, outside the pixel loop.

Packing (pack_qweights): w as [ceil(C / PANEL), ceil(K / 4), 4 * PANEL] int8: per panel
of PANEL output channels and per group of 4 inputs, 64 bytes for each 16 channels, the
4 inputs of a channel adjacent (vpdpbusd's lane). Without vpdpbusd (PAIRS), int16: per
16 channels, inputs 0 and 1 of each channel side by side, then inputs 2 and 3 (pmaddwd's
pairs, x's bytes widened to int16 and broadcast a pair at a time). Inputs past K and
channels past C are 0, which adds nothing whatever x holds. A tile reads its panel as
one stream. colsum is int32 [ceil(K / 16), C]: row r is sum_{16r <= k < 16r + 16} w[k, c].

K-ranges (the sliced evaluation, qpointwise_acc): the inputs k0..k1 with k0 a multiple
of 16 and k1 a multiple of 16 or K are `packed[:, k0 // 4 : -(-k1 // 4)]` and
`colsum[k0 // 16 : -(-k1 // 16)]`, views both, with x [P, k1 - k0].
"""
import numpy as np
from numba import njit

from .qsimd import LANES, iadd, iload, imul, isplat, quad, vbounds, vdotx, vfinish6, vscales, wload
from .target import current

GROUP = 4  # inputs per lane of a packed vector
SUM_BLOCK = 16  # inputs per row of colsum: the granularity of a K-range
WIDE = current().int_dot == "avx512vnni"  # 4-vector tiles: the registers hold 6 x 4 accumulators
PANEL = 4 * LANES if WIDE else LANES  # channels per panel
PIXELS = 6  # pixels per tile
PAIRS = not WIDE  # weights as int16 pairs for pmaddwd, without vpdpbusd (docstring: packing)
WEIGHT = np.int16 if PAIRS else np.int8


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
    packed = np.zeros((-(-C // PANEL), -(-K // GROUP), GROUP * PANEL), WEIGHT)
    colsum = np.zeros((-(-K // SUM_BLOCK), C), np.int32)
    for k in range(K):
        for c in range(C):
            v, lane, j = (c % PANEL) // LANES, c % LANES, k % GROUP
            at = (j // 2) * 2 * LANES + lane * 2 + j % 2 if PAIRS else lane * GROUP + j
            packed[c // PANEL, k // GROUP, v * GROUP * LANES + at] = w[k, c]
            colsum[k // SUM_BLOCK, c] += w[k, c]
    return packed, colsum


@njit(cache=True, nogil=True)
def qpointwise(x, packed, colsum, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi, out):
    """out int8 [P, C] = the requantized 1x1 conv of x int8 [P, K] (module docstring)."""
    P, C = out.shape
    _check(x, packed, colsum, P, C)
    if bias.shape[0] != C or mult.shape[0] != C or shift.shape[0] != C:
        raise QuantizedGemmError("bias, mult and shift need one entry per output channel")
    for c in range(C):
        if mult[c] < 0:  # the requantization leaves out INT32_MIN squared's saturation (qsimd.vfinish6)
            raise QuantizedGemmError("the multipliers must not be negative (QuantizeMultiplier's are in [2^30, 2^31))")
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


@njit(cache=True, inline="always")  # inlined: one level of calls less to optimize again (cold start)
def _qgemm(x, packed, colsum, bias, mult, shift, xz, wz, yz, lo, hi, out, acc, accumulate, C):
    P, K = x.shape
    for i in range(packed.shape[0]):
        c = i * PANEL
        live = min(PANEL, C - c)
        n0, n1, n2, n3 = _lanes(live, 0), _lanes(live, 1), _lanes(live, 2), _lanes(live, 3)
        k0 = _constant(colsum, bias, c, n0, xz, wz, K, accumulate)
        k1 = _constant(colsum, bias, c + LANES, n1, xz, wz, K, accumulate)
        k2 = _constant(colsum, bias, c + 2 * LANES, n2, xz, wz, K, accumulate)
        k3 = _constant(colsum, bias, c + 3 * LANES, n3, xz, wz, K, accumulate)
        m0, s0 = _scales(mult, shift, c, n0, accumulate)
        m1, s1 = _scales(mult, shift, c + LANES, n1, accumulate)
        m2, s2 = _scales(mult, shift, c + 2 * LANES, n2, accumulate)
        m3, s3 = _scales(mult, shift, c + 3 * LANES, n3, accumulate)
        bounds = vbounds(yz, lo, hi)
        end0 = (c, n0, k0, vscales(m0, s0))
        end1 = (c + LANES, n1, k1, vscales(m1, s1))
        if WIDE and (P == 1 or live > 2 * LANES):  # 48 channels too (as in no MobileNetV2 1.0 layer)
            ends = end0 + end1 + (c + 2 * LANES, n2, k2, vscales(m2, s2), c + 3 * LANES, n3, k3, vscales(m3, s3),
                                  bounds)
            if P == 1:  # the classifier: one pixel, not six copies of it
                _pixel(x, packed, i, wz, ends, out, acc, accumulate)
            else:
                _tile4(x, packed, i, wz, ends, out, acc, accumulate)
        elif live > LANES:
            _tile2(x, packed, i, wz, end0 + end1 + (bounds,), out, acc, accumulate)
        else:
            _tile1(x, packed, i, wz, end0 + (bounds,), out, acc, accumulate)


@njit(cache=True, inline="always")
def _lanes(live, v):
    """Live lanes of vector v of a panel with `live` channels (0 for a vector past them)."""
    return min(max(live - v * LANES, 0), LANES)


@njit(cache=True, _nrt=False)
def _constant(colsum, bias, c, n, xz, wz, K, accumulate):
    """The per-channel part of the sum, for channels c..c+n-1:
    bias - (128 + xz) sum_k w + K xz wz (no bias when accumulating)."""
    s = isplat(0)
    for r in range(colsum.shape[0]):
        s = iadd(s, iload(colsum, (r, c), n))
    k = iadd(imul(s, isplat(-(128 + xz))), isplat(np.int64(K) * xz * wz))
    if not accumulate:
        k = iadd(k, iload(bias, (c,), n))
    return k


@njit(cache=True, _nrt=False)
def _scales(mult, shift, c, n, accumulate):
    """The requantization's vectors of channels c..c+n-1 (zeros when accumulating)."""
    if accumulate or n <= 0:
        return isplat(0), isplat(0)
    return iload(mult, (c,), n), iload(shift, (c,), n)


@njit(cache=True, inline="always")
def _row_term(x, p, wz):
    """The per-pixel part of the sum: -wz sum_k x[p, k], wrapped to int32 (nothing to sum
    for weights without a zero point)."""
    if wz == 0:
        return np.int32(0)
    s = np.int32(0)
    for k in range(x.shape[1]):
        s += np.int32(x[p, k])
    return np.int32(np.int64(s) * -np.int64(wz))


@njit(cache=True, inline="always")
def _tail_quad(x, p, k):
    """The bytes x[p, k:K] (fewer than 4) as one int32, zeros past K: nothing past the row
    is read (a zero byte meets a zero weight there)."""
    q = 0
    for j in range(x.shape[1] - k):
        q |= (np.int32(x[p, k + j]) & 0xFF) << (8 * j)
    return np.int32(q)


@njit(cache=True, inline="always")
def _quads(x, p, k, tail):
    """x[p, k:k+4] of each of pixels p..p+5 (the last pixel repeated past P), as int32."""
    q = x.shape[0] - 1
    p1, p2, p3, p4, p5 = min(p + 1, q), min(p + 2, q), min(p + 3, q), min(p + 4, q), min(p + 5, q)
    if tail:
        return (_tail_quad(x, p, k), _tail_quad(x, p1, k), _tail_quad(x, p2, k),
                _tail_quad(x, p3, k), _tail_quad(x, p4, k), _tail_quad(x, p5, k))
    return quad(x, (p, k)), quad(x, (p1, k)), quad(x, (p2, k)), quad(x, (p3, k)), quad(x, (p4, k)), quad(x, (p5, k))


@njit(cache=True, inline="always")
def _rows(x, p, wz):
    """The per-pixel part of the sum of pixels p..p+5 (0 past P: those are not written)."""
    q = x.shape[0] - 1
    return (_row_term(x, min(p, q), wz), _row_term(x, min(p + 1, q), wz), _row_term(x, min(p + 2, q), wz),
            _row_term(x, min(p + 3, q), wz), _row_term(x, min(p + 4, q), wz), _row_term(x, min(p + 5, q), wz))


@njit(cache=True, inline="always")
def _starts(k, r, wz):
    """The six accumulators of a vector of a tile, started from the sum's per-channel part
    k and, for weights with a zero point, each pixel's part r = _rows(...) (qsimd.vfinish6
    adds neither)."""
    if wz == 0:
        return k, k, k, k, k, k
    return (iadd(k, isplat(r[0])), iadd(k, isplat(r[1])), iadd(k, isplat(r[2])), iadd(k, isplat(r[3])),
            iadd(k, isplat(r[4])), iadd(k, isplat(r[5])))


@njit(cache=True, _nrt=False)
def _tile4(x, packed, i, wz, ends, out, acc, accumulate):
    """Every pixel, six at a time, x the 64 channels of panel i: 24 accumulators, 4 weight
    vectors, one pixel's 4 bytes broadcast at a time. One call a panel, not a tile: each
    call copies `ends` (2.4 KB), which per tile made the 112 x 112 expansion 1.5x slower."""
    K = x.shape[1]
    for p in range(0, x.shape[0], PIXELS):
        r = _rows(x, p, wz)
        a00, a10, a20, a30, a40, a50 = _starts(ends[2], r, wz)
        a01, a11, a21, a31, a41, a51 = _starts(ends[6], r, wz)
        a02, a12, a22, a32, a42, a52 = _starts(ends[10], r, wz)
        a03, a13, a23, a33, a43, a53 = _starts(ends[14], r, wz)
        for g in range(K // GROUP):
            w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
            w2, w3 = wload(packed, (i, g, 128)), wload(packed, (i, g, 192))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, False)
            a00, a01, a02, a03 = vdotx(a00, w0, x0), vdotx(a01, w1, x0), vdotx(a02, w2, x0), vdotx(a03, w3, x0)
            a10, a11, a12, a13 = vdotx(a10, w0, x1), vdotx(a11, w1, x1), vdotx(a12, w2, x1), vdotx(a13, w3, x1)
            a20, a21, a22, a23 = vdotx(a20, w0, x2), vdotx(a21, w1, x2), vdotx(a22, w2, x2), vdotx(a23, w3, x2)
            a30, a31, a32, a33 = vdotx(a30, w0, x3), vdotx(a31, w1, x3), vdotx(a32, w2, x3), vdotx(a33, w3, x3)
            a40, a41, a42, a43 = vdotx(a40, w0, x4), vdotx(a41, w1, x4), vdotx(a42, w2, x4), vdotx(a43, w3, x4)
            a50, a51, a52, a53 = vdotx(a50, w0, x5), vdotx(a51, w1, x5), vdotx(a52, w2, x5), vdotx(a53, w3, x5)
        if K % GROUP:  # the last inputs, fewer than 4: nothing past the row is read
            g = K // GROUP
            w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
            w2, w3 = wload(packed, (i, g, 128)), wload(packed, (i, g, 192))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, True)
            a00, a01, a02, a03 = vdotx(a00, w0, x0), vdotx(a01, w1, x0), vdotx(a02, w2, x0), vdotx(a03, w3, x0)
            a10, a11, a12, a13 = vdotx(a10, w0, x1), vdotx(a11, w1, x1), vdotx(a12, w2, x1), vdotx(a13, w3, x1)
            a20, a21, a22, a23 = vdotx(a20, w0, x2), vdotx(a21, w1, x2), vdotx(a22, w2, x2), vdotx(a23, w3, x2)
            a30, a31, a32, a33 = vdotx(a30, w0, x3), vdotx(a31, w1, x3), vdotx(a32, w2, x3), vdotx(a33, w3, x3)
            a40, a41, a42, a43 = vdotx(a40, w0, x4), vdotx(a41, w1, x4), vdotx(a42, w2, x4), vdotx(a43, w3, x4)
            a50, a51, a52, a53 = vdotx(a50, w0, x5), vdotx(a51, w1, x5), vdotx(a52, w2, x5), vdotx(a53, w3, x5)
        vfinish6(out, acc, p, ends, 0, (a00, a10, a20, a30, a40, a50), accumulate)
        vfinish6(out, acc, p, ends, 1, (a01, a11, a21, a31, a41, a51), accumulate)
        vfinish6(out, acc, p, ends, 2, (a02, a12, a22, a32, a42, a52), accumulate)
        vfinish6(out, acc, p, ends, 3, (a03, a13, a23, a33, a43, a53), accumulate)


@njit(cache=True, _nrt=False)
def _tile2(x, packed, i, wz, ends, out, acc, accumulate):
    """Every pixel, six at a time, x the first 32 channels of panel i."""
    K = x.shape[1]
    for p in range(0, x.shape[0], PIXELS):
        r = _rows(x, p, wz)
        a00, a10, a20, a30, a40, a50 = _starts(ends[2], r, wz)
        a01, a11, a21, a31, a41, a51 = _starts(ends[6], r, wz)
        for g in range(K // GROUP):
            w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, False)
            a00, a01, a10, a11 = vdotx(a00, w0, x0), vdotx(a01, w1, x0), vdotx(a10, w0, x1), vdotx(a11, w1, x1)
            a20, a21, a30, a31 = vdotx(a20, w0, x2), vdotx(a21, w1, x2), vdotx(a30, w0, x3), vdotx(a31, w1, x3)
            a40, a41, a50, a51 = vdotx(a40, w0, x4), vdotx(a41, w1, x4), vdotx(a50, w0, x5), vdotx(a51, w1, x5)
        if K % GROUP:  # the last inputs, fewer than 4: nothing past the row is read
            g = K // GROUP
            w0, w1 = wload(packed, (i, g, 0)), wload(packed, (i, g, 64))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, True)
            a00, a01, a10, a11 = vdotx(a00, w0, x0), vdotx(a01, w1, x0), vdotx(a10, w0, x1), vdotx(a11, w1, x1)
            a20, a21, a30, a31 = vdotx(a20, w0, x2), vdotx(a21, w1, x2), vdotx(a30, w0, x3), vdotx(a31, w1, x3)
            a40, a41, a50, a51 = vdotx(a40, w0, x4), vdotx(a41, w1, x4), vdotx(a50, w0, x5), vdotx(a51, w1, x5)
        vfinish6(out, acc, p, ends, 0, (a00, a10, a20, a30, a40, a50), accumulate)
        vfinish6(out, acc, p, ends, 1, (a01, a11, a21, a31, a41, a51), accumulate)


@njit(cache=True, _nrt=False)
def _tile1(x, packed, i, wz, ends, out, acc, accumulate):
    """Every pixel, six at a time, x the first 16 channels of panel i."""
    K = x.shape[1]
    for p in range(0, x.shape[0], PIXELS):
        a0, a1, a2, a3, a4, a5 = _starts(ends[2], _rows(x, p, wz), wz)
        for g in range(K // GROUP):
            w = wload(packed, (i, g, 0))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, False)
            a0, a1, a2 = vdotx(a0, w, x0), vdotx(a1, w, x1), vdotx(a2, w, x2)
            a3, a4, a5 = vdotx(a3, w, x3), vdotx(a4, w, x4), vdotx(a5, w, x5)
        if K % GROUP:  # the last inputs, fewer than 4: nothing past the row is read
            g = K // GROUP
            w = wload(packed, (i, g, 0))
            x0, x1, x2, x3, x4, x5 = _quads(x, p, g * GROUP, True)
            a0, a1, a2 = vdotx(a0, w, x0), vdotx(a1, w, x1), vdotx(a2, w, x2)
            a3, a4, a5 = vdotx(a3, w, x3), vdotx(a4, w, x4), vdotx(a5, w, x5)
        vfinish6(out, acc, p, ends, 0, (a0, a1, a2, a3, a4, a5), accumulate)


@njit(cache=True, _nrt=False)
def _pixel(x, packed, i, wz, ends, out, acc, accumulate):
    """Pixel 0 x the 64 channels of panel i (vectors past C read the packing's zero
    weights): two sets of accumulators, even and odd groups, for independent chains."""
    K = x.shape[1]
    z = isplat(0)
    r = _rows(x, 0, wz)
    a0, a1, a2, a3 = _starts(ends[2], r, wz)[0], _starts(ends[6], r, wz)[0], _starts(ends[10], r, wz)[0], \
        _starts(ends[14], r, wz)[0]
    b0 = b1 = b2 = b3 = z
    pairs = K // (2 * GROUP)
    for h in range(pairs):
        g = 2 * h
        q, r = quad(x, (0, g * GROUP)), quad(x, (0, g * GROUP + GROUP))
        a0, a1 = vdotx(a0, wload(packed, (i, g, 0)), q), vdotx(a1, wload(packed, (i, g, 64)), q)
        a2, a3 = vdotx(a2, wload(packed, (i, g, 128)), q), vdotx(a3, wload(packed, (i, g, 192)), q)
        b0, b1 = vdotx(b0, wload(packed, (i, g + 1, 0)), r), vdotx(b1, wload(packed, (i, g + 1, 64)), r)
        b2, b3 = vdotx(b2, wload(packed, (i, g + 1, 128)), r), vdotx(b3, wload(packed, (i, g + 1, 192)), r)
    for g in range(2 * pairs, -(-K // GROUP)):
        q = _tail_quad(x, 0, g * GROUP) if g * GROUP + GROUP > K else quad(x, (0, g * GROUP))
        a0, a1 = vdotx(a0, wload(packed, (i, g, 0)), q), vdotx(a1, wload(packed, (i, g, 64)), q)
        a2, a3 = vdotx(a2, wload(packed, (i, g, 128)), q), vdotx(a3, wload(packed, (i, g, 192)), q)
    # the tile's other five pixels are past P = 1: not written
    vfinish6(out, acc, 0, ends, 0, (iadd(a0, b0), z, z, z, z, z), accumulate)
    vfinish6(out, acc, 0, ends, 1, (iadd(a1, b1), z, z, z, z, z), accumulate)
    vfinish6(out, acc, 0, ends, 2, (iadd(a2, b2), z, z, z, z, z), accumulate)
    vfinish6(out, acc, 0, ends, 3, (iadd(a3, b3), z, z, z, z, z), accumulate)
