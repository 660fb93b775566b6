"""A 1x1 conv for outputs whose width is not a multiple of 16: two inputs per vector.

    out = clamp(b + x @ w, lo, hi)        x [P, K], out [P, C]

A vector holds 8 output channels x 2 inputs: lanes 2l and 2l + 1 sum channel l over the
even and the odd inputs. Per pixel and pair of inputs, one 64-bit broadcast of
x[p, k:k + 2] multiplies ceil(C / 8) vectors of weights; at the end, adding neighbouring
lanes (simd.vfold) gives the channels, as in the stem (stem.py).

Why: the expansion slices of t = 4 are 24 and 36 channels wide in the early blocks. By
one input per vector of 16 channels (gemm.py) they take 2 and 3 vectors, a quarter of
the lanes empty; here 3 and 5 vectors, none or a tenth empty.

Weights: pack_pairs(w) [ceil(C / 8), ceil(K / 2), 16], element [g, i, 2l + s] is
w[2i + s, 8g + l]. With K odd, the last pair is inputs K - 2 and K - 1, the first
weight zero (it was counted by the pair before), so that no pair reads past a row of x.
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH
from .simd import LANES, vfma, vload, vload_pair, vsplat, vstore
from .stem import PER_VECTOR, finish
from .target import current

WIDEST = current().tiles.pairs_vectors  # vectors of the widest tile: 3 on AVX-512, 1 on AVX2
ONE_VECTOR_PIXELS = 12 if WIDEST >= 3 else 6  # pixels of the one-vector tile: 24 or 12 ymm on AVX2


@njit(cache=True)
def uses_pairs(C, K):
    """Whether a 1x1 conv of K inputs and C outputs is packed and run by pairs."""
    return C % LANES != 0 and K >= 2


@njit(cache=True)
def packed_shape(K, C):
    """The shape pack_pairs gives w [K, C]."""
    return -(-C // PER_VECTOR), -(-K // 2), LANES


@njit(cache=True)
def pack_pairs(w):
    """w [K, C] as [ceil(C / 8), ceil(K / 2), 16] for pointwise_pairs."""
    K, C = w.shape
    pairs = -(-K // 2)
    out = np.zeros(packed_shape(K, C), np.float32)
    for k in range(K):
        i, s = (k // 2, k % 2) if k < K - K % 2 else (pairs - 1, 1)
        for c in range(C):
            out[c // PER_VECTOR, i, 2 * (c % PER_VECTOR) + s] = w[k, c]
    return out


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def pointwise_pairs(x, w, b, lo, hi, out):
    """out = clamp(b + x @ w, lo, hi); x [P, K] with C-contiguous rows, w from pack_pairs,
    out [P, C]. Vectors three at a time (24 channels), then two, then one, as far as the
    target's registers hold those tiles (target.py: on AVX2, one vector of 6 pixels)."""
    P, C = out.shape
    G = w.shape[0]
    g = 0
    while g < G:
        left = G - g
        if WIDEST >= 3 and left >= 3:
            for p in range(0, P, 6):
                _tile3(x, w, b, lo, hi, out, p, g)
            g += 3
        elif WIDEST >= 2 and left == 2:
            for p in range(0, P, 6):
                _tile2(x, w, b, lo, hi, out, p, g)
            g += 2
        else:
            for p in range(0, P, ONE_VECTOR_PIXELS):
                _tile1(x, w, b, lo, hi, out, p, g)
            g += 1


@njit(cache=True)
def _start(i, K):
    """The first input of pair i."""
    return min(2 * i, K - 2)


@njit(cache=True)
def _pixels6(p, P):
    """The rows p..p+5 of a tile; those past the last row are that row (computed twice)."""
    last = P - 1
    return p, min(p + 1, last), min(p + 2, last), min(p + 3, last), min(p + 4, last), min(p + 5, last)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile3(x, w, b, lo, hi, out, p, g):
    """Pixels p..p+5 x weight vectors g, g + 1, g + 2 (24 channels)."""
    P, K = x.shape
    q0, q1, q2, q3, q4, q5 = _pixels6(p, P)
    z = vsplat(0.0)
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = c0 = c1 = c2 = c3 = c4 = c5 = z
    for i in range(w.shape[1]):
        k = _start(i, K)
        u, v, t = vload(w, (g, i, 0), LANES), vload(w, (g + 1, i, 0), LANES), vload(w, (g + 2, i, 0), LANES)
        a0, b0, c0 = _fma3(vload_pair(x, (q0, k)), u, v, t, a0, b0, c0)
        a1, b1, c1 = _fma3(vload_pair(x, (q1, k)), u, v, t, a1, b1, c1)
        a2, b2, c2 = _fma3(vload_pair(x, (q2, k)), u, v, t, a2, b2, c2)
        a3, b3, c3 = _fma3(vload_pair(x, (q3, k)), u, v, t, a3, b3, c3)
        a4, b4, c4 = _fma3(vload_pair(x, (q4, k)), u, v, t, a4, b4, c4)
        a5, b5, c5 = _fma3(vload_pair(x, (q5, k)), u, v, t, a5, b5, c5)
    C = out.shape[1]
    c = PER_VECTOR * g
    n, m = min(LANES, C - c), min(PER_VECTOR, C - c - LANES)
    bias, bias2 = vload(b, (c,), n), vload(b, (c + LANES,), m)
    for q, (s0, s1, s2) in enumerate(((a0, b0, c0), (a1, b1, c1), (a2, b2, c2),
                                      (a3, b3, c3), (a4, b4, c4), (a5, b5, c5))):
        row = min(p + q, P - 1)
        vstore(out, (row, c), n, finish(s0, s1, bias, lo, hi))
        vstore(out, (row, c + LANES), m, finish(s2, s2, bias2, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile2(x, w, b, lo, hi, out, p, g):
    """Pixels p..p+5 x weight vectors g, g + 1 (16 channels)."""
    P, K = x.shape
    q0, q1, q2, q3, q4, q5 = _pixels6(p, P)
    z = vsplat(0.0)
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = z
    for i in range(w.shape[1]):
        k = _start(i, K)
        u, v = vload(w, (g, i, 0), LANES), vload(w, (g + 1, i, 0), LANES)
        a0, b0 = _fma2(vload_pair(x, (q0, k)), u, v, a0, b0)
        a1, b1 = _fma2(vload_pair(x, (q1, k)), u, v, a1, b1)
        a2, b2 = _fma2(vload_pair(x, (q2, k)), u, v, a2, b2)
        a3, b3 = _fma2(vload_pair(x, (q3, k)), u, v, a3, b3)
        a4, b4 = _fma2(vload_pair(x, (q4, k)), u, v, a4, b4)
        a5, b5 = _fma2(vload_pair(x, (q5, k)), u, v, a5, b5)
    c = PER_VECTOR * g
    n = min(LANES, out.shape[1] - c)
    bias = vload(b, (c,), n)
    for q, (s0, s1) in enumerate(((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5))):
        vstore(out, (min(p + q, P - 1), c), n, finish(s0, s1, bias, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile1(x, w, b, lo, hi, out, p, g):
    """Pixels p..p+ONE_VECTOR_PIXELS-1 x weight vector g (8 channels)."""
    P, K = x.shape
    q0, q1, q2, q3, q4, q5 = _pixels6(p, P)
    q6, q7, q8, q9, q10, q11 = _pixels6(p + 6, P)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vsplat(0.0)
    for i in range(w.shape[1]):
        k = _start(i, K)
        u = vload(w, (g, i, 0), LANES)
        a0, a1, a2 = vfma(vload_pair(x, (q0, k)), u, a0), vfma(vload_pair(x, (q1, k)), u, a1), vfma(vload_pair(x, (q2, k)), u, a2)
        a3, a4, a5 = vfma(vload_pair(x, (q3, k)), u, a3), vfma(vload_pair(x, (q4, k)), u, a4), vfma(vload_pair(x, (q5, k)), u, a5)
        if ONE_VECTOR_PIXELS > 6:  # a constant: with 6, these accumulators are dropped
            a6, a7, a8 = (vfma(vload_pair(x, (q6, k)), u, a6), vfma(vload_pair(x, (q7, k)), u, a7),
                          vfma(vload_pair(x, (q8, k)), u, a8))
            a9, a10, a11 = (vfma(vload_pair(x, (q9, k)), u, a9), vfma(vload_pair(x, (q10, k)), u, a10),
                            vfma(vload_pair(x, (q11, k)), u, a11))
    c = PER_VECTOR * g
    n = min(PER_VECTOR, out.shape[1] - c)
    bias = vload(b, (c,), n)
    for q, s in enumerate((a0, a1, a2, a3, a4, a5)):
        vstore(out, (min(p + q, P - 1), c), n, finish(s, s, bias, lo, hi))
    if ONE_VECTOR_PIXELS > 6:
        for q, s in enumerate((a6, a7, a8, a9, a10, a11)):
            vstore(out, (min(p + 6 + q, P - 1), c), n, finish(s, s, bias, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fma3(pair, u, v, t, a, b, c):
    return vfma(pair, u, a), vfma(pair, v, b), vfma(pair, t, c)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fma2(pair, u, v, a, b):
    return vfma(pair, u, a), vfma(pair, v, b)
