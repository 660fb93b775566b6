"""The one GEMM of the engine, register-blocked: every 1x1 conv and the classifier.

    out = clamp((out if accumulate else b) + x @ w, lo, hi)
    x [P, K] pixels by input channels, w [K, C], b [C], out [P, C]

The output is cut into tiles of a few pixels by a few 16-lane vectors of channels. A
tile's accumulators stay in registers for the whole sum over k: per k, the tile loads
one vector of weights per channel vector and one scalar of x per pixel, and does
pixels x vectors FMAs. That ratio is what makes it fast: the 4 x 4 tile does 16 FMAs
for 8 loads, where the plain loop did one load and one store per FMA.

  wide tile    4 pixels x 64 channels (4 vectors): for every chunk of more than 32 channels
  narrow tile  8 pixels x 32 channels (2 vectors): the narrow outputs (16-32 channels:
               the early projections, and slices) and the last <= 32 channels of a row

Edges: lanes past the end of a row are masked (neither read nor written); pixels past
the last one recompute the last pixel, whose stores then write the same values twice.
Each output sums over k in order, whatever the tiling, so results do not depend on it.
"""
import numpy as np
from numba import njit

from .simd import vclamp, vfma, vload, vsplat, vstore

# 'contract' lets LLVM fuse a*b+c into one FMA: faster, and one rounding instead of two.
# No reassociation flags: every loop runs over independent output channels, so nothing
# reorders a sum, and results do not depend on the SIMD width.
FASTMATH = {"contract"}
WIDE, NARROW = 64, 32  # channels per tile


@njit(cache=True, fastmath=FASTMATH)
def gemm(x, w, b, accumulate, lo, hi, out):
    P, C = out.shape
    c = 0
    while c < C:
        width = C - c
        if width > NARROW:
            for p in range(0, P, 4):
                _wide_tile(x, w, b, accumulate, lo, hi, out, p, c, _lanes(width, 0),
                           _lanes(width, 1), _lanes(width, 2), _lanes(width, 3))
            c += WIDE
        else:
            for p in range(0, P, 8):
                _narrow_tile(x, w, b, accumulate, lo, hi, out, p, c, _lanes(width, 0), _lanes(width, 1))
            c += NARROW


@njit(cache=True)
def _lanes(width, v):
    """How many of the `width` remaining channels fall in vector v (16 lanes) of a tile."""
    return min(max(width - 16 * v, 0), 16)


@njit(cache=True, fastmath=FASTMATH)
def _wide_tile(x, w, b, accumulate, lo, hi, out, p, c, n0, n1, n2, n3):
    """Pixels p..p+3 x channels c..c+63; n0..n3 live lanes in each of the 4 vectors."""
    P, K = x.shape
    lo32, hi32 = np.float32(lo), np.float32(hi)
    p1, p2, p3 = min(p + 1, P - 1), min(p + 2, P - 1), min(p + 3, P - 1)
    c1, c2, c3 = c + 16, c + 32, c + 48
    if accumulate:
        a00, a01, a02, a03 = vload(out, (p, c), n0), vload(out, (p, c1), n1), vload(out, (p, c2), n2), vload(out, (p, c3), n3)
        a10, a11, a12, a13 = vload(out, (p1, c), n0), vload(out, (p1, c1), n1), vload(out, (p1, c2), n2), vload(out, (p1, c3), n3)
        a20, a21, a22, a23 = vload(out, (p2, c), n0), vload(out, (p2, c1), n1), vload(out, (p2, c2), n2), vload(out, (p2, c3), n3)
        a30, a31, a32, a33 = vload(out, (p3, c), n0), vload(out, (p3, c1), n1), vload(out, (p3, c2), n2), vload(out, (p3, c3), n3)
    else:
        a00 = a10 = a20 = a30 = vload(b, (c,), n0)
        a01 = a11 = a21 = a31 = vload(b, (c1,), n1)
        a02 = a12 = a22 = a32 = vload(b, (c2,), n2)
        a03 = a13 = a23 = a33 = vload(b, (c3,), n3)
    for k in range(K):
        w0, w1, w2, w3 = vload(w, (k, c), n0), vload(w, (k, c1), n1), vload(w, (k, c2), n2), vload(w, (k, c3), n3)
        s = vsplat(x[p, k])
        a00, a01, a02, a03 = vfma(s, w0, a00), vfma(s, w1, a01), vfma(s, w2, a02), vfma(s, w3, a03)
        s = vsplat(x[p1, k])
        a10, a11, a12, a13 = vfma(s, w0, a10), vfma(s, w1, a11), vfma(s, w2, a12), vfma(s, w3, a13)
        s = vsplat(x[p2, k])
        a20, a21, a22, a23 = vfma(s, w0, a20), vfma(s, w1, a21), vfma(s, w2, a22), vfma(s, w3, a23)
        s = vsplat(x[p3, k])
        a30, a31, a32, a33 = vfma(s, w0, a30), vfma(s, w1, a31), vfma(s, w2, a32), vfma(s, w3, a33)
    _store4(out, p, c, n0, n1, n2, n3, lo32, hi32, a00, a01, a02, a03)
    _store4(out, p1, c, n0, n1, n2, n3, lo32, hi32, a10, a11, a12, a13)
    _store4(out, p2, c, n0, n1, n2, n3, lo32, hi32, a20, a21, a22, a23)
    _store4(out, p3, c, n0, n1, n2, n3, lo32, hi32, a30, a31, a32, a33)


@njit(cache=True, fastmath=FASTMATH)
def _narrow_tile(x, w, b, accumulate, lo, hi, out, p, c, n0, n1):
    """Pixels p..p+7 x channels c..c+31; n0, n1 live lanes in each of the 2 vectors."""
    P, K = x.shape
    lo32, hi32 = np.float32(lo), np.float32(hi)
    last = P - 1
    p1, p2, p3 = min(p + 1, last), min(p + 2, last), min(p + 3, last)
    p4, p5, p6, p7 = min(p + 4, last), min(p + 5, last), min(p + 6, last), min(p + 7, last)
    c1 = c + 16
    if accumulate:
        a00, a01 = vload(out, (p, c), n0), vload(out, (p, c1), n1)
        a10, a11 = vload(out, (p1, c), n0), vload(out, (p1, c1), n1)
        a20, a21 = vload(out, (p2, c), n0), vload(out, (p2, c1), n1)
        a30, a31 = vload(out, (p3, c), n0), vload(out, (p3, c1), n1)
        a40, a41 = vload(out, (p4, c), n0), vload(out, (p4, c1), n1)
        a50, a51 = vload(out, (p5, c), n0), vload(out, (p5, c1), n1)
        a60, a61 = vload(out, (p6, c), n0), vload(out, (p6, c1), n1)
        a70, a71 = vload(out, (p7, c), n0), vload(out, (p7, c1), n1)
    else:
        a00 = a10 = a20 = a30 = a40 = a50 = a60 = a70 = vload(b, (c,), n0)
        a01 = a11 = a21 = a31 = a41 = a51 = a61 = a71 = vload(b, (c1,), n1)
    for k in range(K):
        w0, w1 = vload(w, (k, c), n0), vload(w, (k, c1), n1)
        s = vsplat(x[p, k])
        a00, a01 = vfma(s, w0, a00), vfma(s, w1, a01)
        s = vsplat(x[p1, k])
        a10, a11 = vfma(s, w0, a10), vfma(s, w1, a11)
        s = vsplat(x[p2, k])
        a20, a21 = vfma(s, w0, a20), vfma(s, w1, a21)
        s = vsplat(x[p3, k])
        a30, a31 = vfma(s, w0, a30), vfma(s, w1, a31)
        s = vsplat(x[p4, k])
        a40, a41 = vfma(s, w0, a40), vfma(s, w1, a41)
        s = vsplat(x[p5, k])
        a50, a51 = vfma(s, w0, a50), vfma(s, w1, a51)
        s = vsplat(x[p6, k])
        a60, a61 = vfma(s, w0, a60), vfma(s, w1, a61)
        s = vsplat(x[p7, k])
        a70, a71 = vfma(s, w0, a70), vfma(s, w1, a71)
    _store2(out, p, c, n0, n1, lo32, hi32, a00, a01)
    _store2(out, p1, c, n0, n1, lo32, hi32, a10, a11)
    _store2(out, p2, c, n0, n1, lo32, hi32, a20, a21)
    _store2(out, p3, c, n0, n1, lo32, hi32, a30, a31)
    _store2(out, p4, c, n0, n1, lo32, hi32, a40, a41)
    _store2(out, p5, c, n0, n1, lo32, hi32, a50, a51)
    _store2(out, p6, c, n0, n1, lo32, hi32, a60, a61)
    _store2(out, p7, c, n0, n1, lo32, hi32, a70, a71)


@njit(cache=True, fastmath=FASTMATH)
def _store4(out, p, c, n0, n1, n2, n3, lo, hi, v0, v1, v2, v3):
    vstore(out, (p, c), n0, vclamp(v0, lo, hi))
    vstore(out, (p, c + 16), n1, vclamp(v1, lo, hi))
    vstore(out, (p, c + 32), n2, vclamp(v2, lo, hi))
    vstore(out, (p, c + 48), n3, vclamp(v3, lo, hi))


@njit(cache=True, fastmath=FASTMATH)
def _store2(out, p, c, n0, n1, lo, hi, v0, v1):
    vstore(out, (p, c), n0, vclamp(v0, lo, hi))
    vstore(out, (p, c + 16), n1, vclamp(v1, lo, hi))
