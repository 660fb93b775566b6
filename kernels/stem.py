"""The stem: a full 3x3 conv over the image, one output row at a time.

For kernel row ky, the window of output pixel q is a run of taps = 3 * Cin consecutive
floats of image row iy + ky, starting step = stride * Cin floats after pixel q - 1's
(6 apart for RGB at stride 2). A vector holds 2 taps of 8 channels: lanes 2l and 2l + 1
are channel l's sums over the first and the second tap of each pair of taps. Its input
is one 64-bit broadcast of two neighbouring image floats, times a vector of weights
(pack_stem); after all 27 taps, adding neighbouring lanes (vfold) gives the channels.

Why taps in lanes: a slice of 8 channels (the 32-channel stem at t = 4) would fill
half a vector and cost as much as 16 channels. Two taps per vector rather than four: a
row's 9 taps waste less, and the sums take one fold.

Pair i of a kernel row is taps 2i and 2i + 1. With an odd number of taps (RGB: 9) the
last pair's second float is the next window's first, with a zero weight. Then, at an
even step (RGB at stride 2: 6), the pair that one pixel reads at 2i + step is the pair
the next pixel reads at 2i: _tile12_rgb loads it once for both, and in _tile2, whose loop
over pairs unrolls when taps is a constant, the compiler merges the two loads.
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH
from .simd import LANES, vadd, vclamp, vfma, vfold, vload, vload_pair, vsplat, vsplat_at, vstore
from .target import current

SPAN = 2  # taps per vector
PER_VECTOR = LANES // SPAN  # channels per vector
_TILES = current().tiles
TWO_VECTORS = _TILES.stem_two_vectors  # 6 pixels x 2 vectors (24 accumulators): AVX-512 only
RGB_PIXELS = _TILES.stem_pixels  # the one-vector tile: 12 pixels sharing pairs, or 6 (_tile6_rgb)


@njit(cache=True, inline="always")  # inlined: with taps a constant, so is the count
def _pairs(taps):
    """Pairs of taps per kernel row."""
    return -(-taps // SPAN)


@njit(cache=True)
def packed_shape(K, C):
    """The shape pack_stem gives a kernel w [K = 9 * cin, C]."""
    return -(-C // PER_VECTOR), 3 * _pairs(K // 3), LANES


@njit(cache=True)
def pack_stem(w, cin):
    """The stem kernel w [9 * cin, C] (HWIO flattened) for conv3x3_row:
    [ceil(C / 8), 3 * pairs, 16] with pairs = ceil(3 * cin / 2) per kernel row; element
    [g, ky * pairs + i, 2l + s] is the weight of channel 8g + l for tap s of pair i of
    row ky. (Three axes, like GEMM panels, so that either fits the same argument of the
    block kernel.)"""
    taps = 3 * cin
    C = w.shape[1]
    pairs = _pairs(taps)
    out = np.zeros(packed_shape(w.shape[0], C), np.float32)
    for ky in range(3):
        for j in range(taps):
            for c in range(C):
                out[c // PER_VECTOR, ky * pairs + j // SPAN, SPAN * (c % PER_VECTOR) + j % SPAN] = w[ky * taps + j, c]
    return out


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def conv3x3_row(x, oy, w, b, stride, pad_top, pad_left, lo, hi, out):
    """Output row `oy` of the stem: x [H, W, Cin] one image, C-contiguous; w from
    pack_stem; b [C]; out [Wo, C]. Pixels whose window lies inside the image go through
    the tiles; pixels whose window overlaps the padding, and rows too short for a tile,
    take the checked path."""
    H, W, Cin = x.shape
    Wo, C = out.shape
    iy0 = oy * stride - pad_top
    ox_lo = -(-pad_left // stride)  # first pixel whose window starts inside the image
    ox_hi = max(min(Wo, (W - 3 + pad_left) // stride + 1), ox_lo)  # ... and ends inside
    start = (ox_lo * stride - pad_left) * Cin  # where pixel ox_lo's window starts
    if iy0 + 2 == H - 1 and start + (ox_hi - 1 - ox_lo) * stride * Cin + SPAN * _pairs(3 * Cin) > W * Cin:
        ox_hi -= 1  # the last pair of the image's last pixel would read past the image
    if stride == 2 and Cin == 3 and iy0 >= 0 and iy0 + 2 < H and ox_hi - ox_lo >= 12:
        # Every MobileNetV2 stem: constants make the tiles' addresses fixed offsets from
        # one pointer. Other shapes (tests only) take the checked path: compiling the
        # tiles for them too took a third of the first forward's compile time.
        rows = x[iy0:iy0 + 3].reshape((3, W * Cin))
        _rgb_pixels(rows, start, w, b, lo, hi, out[ox_lo:ox_hi])
    else:
        ox_lo = ox_hi = 0  # every pixel takes the checked path
    for ox in range(Wo):
        if ox < ox_lo or ox >= ox_hi:
            _padded_pixel(x, iy0, ox * stride - pad_left, w, b, lo, hi, out[ox])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _rgb_pixels(rows, start, w, b, lo, hi, out):
    """Every pixel of out [P, C] (P >= 12) of the RGB stem at stride 2: two vectors of
    channels at a time where the registers hold that tile (AVX-512), then one. The
    last tile of a row starts early enough to end at the last pixel: it recomputes a
    few pixels, and no tile needs a check for the row's end."""
    P, C = out.shape
    vectors = w.shape[0]
    g = 0
    if TWO_VECTORS:
        while g + 1 < vectors:
            for p in range(0, P, 6):
                _tile2(rows, start, 6, 9, w, b, lo, hi, out, min(p, P - 6), g, min(2 * PER_VECTOR, C - PER_VECTOR * g))
            g += 2
    while g < vectors:
        n = min(PER_VECTOR, C - PER_VECTOR * g)
        if RGB_PIXELS == 12:
            for p in range(0, P, 12):
                _tile12_rgb(rows, start, w, b, lo, hi, out, min(p, P - 12), g, n)
        else:
            for p in range(0, P, 6):
                _tile6_rgb(rows, start, w, b, lo, hi, out, min(p, P - 6), g, n)
        g += 1


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile2(rows, start, step, taps, w, b, lo, hi, out, p, g, n):
    """Pixels p..p+5 x the n channels of weight vectors g and g + 1: each broadcast feeds
    two FMAs, which the broadcasts' throughput needs."""
    pairs = _pairs(taps)  # a constant when taps is: the loop over pairs unrolls
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = vsplat(0.0)
    for ky in range(3):
        for i in range(pairs):
            wa, wb = vload(w, (g, ky * pairs + i, 0), LANES), vload(w, (g + 1, ky * pairs + i, 0), LANES)
            o = start + p * step + SPAN * i  # pixel p's first tap of the pair
            a0, b0 = _fma2(rows, ky, o, wa, wb, a0, b0)
            a1, b1 = _fma2(rows, ky, o + step, wa, wb, a1, b1)
            a2, b2 = _fma2(rows, ky, o + 2 * step, wa, wb, a2, b2)
            a3, b3 = _fma2(rows, ky, o + 3 * step, wa, wb, a3, b3)
            a4, b4 = _fma2(rows, ky, o + 4 * step, wa, wb, a4, b4)
            a5, b5 = _fma2(rows, ky, o + 5 * step, wa, wb, a5, b5)
    c = PER_VECTOR * g
    bias = vload(b, (c,), n)
    for q, (u, v) in enumerate(((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5))):
        vstore(out, (p + q, c), n, finish(u, v, bias, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile12_rgb(rows, start, w, b, lo, hi, out, p, g, n):
    """Pixels p..p+11 x the n channels of weight vector g, for the RGB stem at stride 2
    (windows 6 floats apart, 9 taps in 5 pairs), where the registers hold 12
    accumulators and a kernel row's 5 weight vectors (AVX-512): pixel q's pairs are the
    row's pairs 3q .. 3q + 4, so each pixel shares two with the next, and loads three.
    A tile of one broadcast per FMA was limited by the broadcasts (about one a cycle):
    0.056 ms for 8 channels of a 224x224 image, 0.049 ms here."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vsplat(0.0)
    for ky in range(3):
        w0, w1, w2 = vload(w, (g, 5 * ky, 0), LANES), vload(w, (g, 5 * ky + 1, 0), LANES), vload(w, (g, 5 * ky + 2, 0), LANES)
        w3, w4 = vload(w, (g, 5 * ky + 3, 0), LANES), vload(w, (g, 5 * ky + 4, 0), LANES)
        o = start + p * 6
        s0, s1 = vload_pair(rows, (ky, o)), vload_pair(rows, (ky, o + 2))
        a0, s0, s1 = _rgb_pixel(rows, ky, o, w0, w1, w2, w3, w4, s0, s1, a0)
        a1, s0, s1 = _rgb_pixel(rows, ky, o + 6, w0, w1, w2, w3, w4, s0, s1, a1)
        a2, s0, s1 = _rgb_pixel(rows, ky, o + 12, w0, w1, w2, w3, w4, s0, s1, a2)
        a3, s0, s1 = _rgb_pixel(rows, ky, o + 18, w0, w1, w2, w3, w4, s0, s1, a3)
        a4, s0, s1 = _rgb_pixel(rows, ky, o + 24, w0, w1, w2, w3, w4, s0, s1, a4)
        a5, s0, s1 = _rgb_pixel(rows, ky, o + 30, w0, w1, w2, w3, w4, s0, s1, a5)
        a6, s0, s1 = _rgb_pixel(rows, ky, o + 36, w0, w1, w2, w3, w4, s0, s1, a6)
        a7, s0, s1 = _rgb_pixel(rows, ky, o + 42, w0, w1, w2, w3, w4, s0, s1, a7)
        a8, s0, s1 = _rgb_pixel(rows, ky, o + 48, w0, w1, w2, w3, w4, s0, s1, a8)
        a9, s0, s1 = _rgb_pixel(rows, ky, o + 54, w0, w1, w2, w3, w4, s0, s1, a9)
        a10, s0, s1 = _rgb_pixel(rows, ky, o + 60, w0, w1, w2, w3, w4, s0, s1, a10)
        a11, s0, s1 = _rgb_pixel(rows, ky, o + 66, w0, w1, w2, w3, w4, s0, s1, a11)
    c = PER_VECTOR * g
    bias = vload(b, (c,), n)
    for q, u in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
        vstore(out, (p + q, c), n, finish(u, u, bias, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _tile6_rgb(rows, start, w, b, lo, hi, out, p, g, n):
    """Pixels p..p+5 x the n channels of weight vector g, for the RGB stem at stride 2,
    where the registers hold only the accumulators and one weight vector (AVX2: 12 +
    2 ymm): as the GEMM's 6 x 16 tile, each pair of taps is one weight vector, and one
    broadcast per pixel feeds that pixel's two ymm FMAs. The loop over a kernel row's
    pairs runs to a count the compiler cannot see (it is the weights' shape), so it
    stays a loop: unrolled, with the pairs shared between pixels as _tile12_rgb does,
    LLVM hoisted the broadcasts and spilled them with the accumulators (11.7 GMAC/s
    for the whole stem; 18.5 so, on AVX2)."""
    a0 = a1 = a2 = a3 = a4 = a5 = vsplat(0.0)
    pairs = w.shape[1] // 3
    o = start + p * 6
    for ky in range(3):
        for i in range(pairs):
            wv = vload(w, (g, ky * pairs + i, 0), LANES)
            t = o + SPAN * i  # pixel p's pair i
            a0, a1 = vfma(vload_pair(rows, (ky, t)), wv, a0), vfma(vload_pair(rows, (ky, t + 6)), wv, a1)
            a2, a3 = vfma(vload_pair(rows, (ky, t + 12)), wv, a2), vfma(vload_pair(rows, (ky, t + 18)), wv, a3)
            a4, a5 = vfma(vload_pair(rows, (ky, t + 24)), wv, a4), vfma(vload_pair(rows, (ky, t + 30)), wv, a5)
    c = PER_VECTOR * g
    bias = vload(b, (c,), n)
    for q, u in enumerate((a0, a1, a2, a3, a4, a5)):
        vstore(out, (p + q, c), n, finish(u, u, bias, lo, hi))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _rgb_pixel(rows, ky, o, w0, w1, w2, w3, w4, s0, s1, a):
    """a + kernel row ky of the pixel whose window starts at o, given its first two pairs
    s0, s1; returns its last two, the next pixel's first two."""
    s2, s3, s4 = vload_pair(rows, (ky, o + 4)), vload_pair(rows, (ky, o + 6)), vload_pair(rows, (ky, o + 8))
    a = vfma(s0, w0, a)
    a = vfma(s1, w1, a)
    a = vfma(s2, w2, a)
    a = vfma(s3, w3, a)
    return vfma(s4, w4, a), s3, s4


# Indexing `rows` itself, never a view of it, in the tiles: making a view calls into
# Numba's runtime, and every accumulator was spilled around the call.

@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fma2(rows, ky, o, wa, wb, a, b):
    """A pair of taps of one pixel, for two vectors of channels."""
    t = vload_pair(rows, (ky, o))
    return vfma(t, wa, a), vfma(t, wb, b)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def finish(u, v, bias, lo, hi):
    """The 8 channels of u, then the 8 of v, each summed over its two lanes, plus the
    bias, clamped: the epilogue of every layout with two inputs per channel (also
    pairs.py)."""
    return vclamp(vadd(vfold(u, v), bias), np.float32(lo), np.float32(hi))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _padded_pixel(x, iy0, ix0, w, b, lo, hi, out):
    """One output pixel out [C] whose window may overlap the zero padding: the taps on
    the padding are skipped, and each other tap's value goes to its lanes."""
    H, W, Cin = x.shape
    C = out.shape[0]
    taps = 3 * Cin
    pairs = _pairs(taps)
    for g in range(w.shape[0]):
        a = vsplat(0.0)
        for ky in range(3):
            iy = iy0 + ky
            for kx in range(3):
                ix = ix0 + kx
                if iy < 0 or iy >= H or ix < 0 or ix >= W:
                    continue
                for ci in range(Cin):
                    j = kx * Cin + ci
                    a = vfma(vsplat_at(x[iy, ix, ci], j % SPAN, SPAN), vload(w, (g, ky * pairs + j // SPAN, 0), LANES), a)
        n = min(PER_VECTOR, C - PER_VECTOR * g)
        vstore(out, (PER_VECTOR * g,), n, finish(a, a, vload(b, (PER_VECTOR * g,), n), lo, hi))
