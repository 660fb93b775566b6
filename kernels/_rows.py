"""Row-level building blocks shared by the whole-tensor kernels and the fused block.

Each computes one output row (a [W, channels] slab) of one operator, so the same code
serves the materialized evaluation (every row, one operator at a time) and the streamed
one (rows produced only when the next operator needs them). Every weight argument is
exactly the slice of channels being computed: depthwise weights as a C-contiguous
[3, 3, channels] array, 1x1 and stem weights as GEMM panels (gemm.py).
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH, PANEL, _store_pixels4, gemm
from .simd import LANES, vadd, vclamp, vfma, vfold, vload, vload_pair, vsplat, vsplat_pair, vstore


@njit(cache=True, fastmath=FASTMATH)
def fill_bias(out, b):
    """out[p, :] = b for every row p of out [P, C]."""
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = b[c]


@njit(cache=True, fastmath=FASTMATH)
def clamp(out, lo, hi):
    """The epilogue's clamp, in place on out [P, C]; lo, hi = -inf, inf leaves it linear."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 == -np.inf and hi32 == np.inf:
        return
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = min(max(out[p, c], lo32), hi32)


@njit(cache=True, fastmath=FASTMATH)
def pointwise_row(x, w, b, lo, hi, out):
    """out = clamp(x @ w + b, lo, hi); x [P, Cin], w [Cin, C] as panels, out [P, C]."""
    gemm(x, w, b, False, lo, hi, out)


@njit(cache=True, fastmath=FASTMATH)
def depthwise_row(e, H, oy, w, b, stride, pad_top, pad_left, lo, hi, out):
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
        ox = 0
        while ox < Wo:
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


@njit(cache=True, fastmath=FASTMATH)
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


@njit(cache=True, fastmath=FASTMATH)
def _tap(w, ky, kx, c, n, inside):
    """Weights w[ky, kx, c:c + n] as a vector, or zeros when that tap is on the padding."""
    return vload(w, (ky, kx, c), n if inside else 0)


@njit(cache=True)
def pack_stem(w, cin):
    """The stem kernel w [9 * cin, C] (HWIO flattened) as tap pairs for conv3x3_row:
    [ceil(C / 8), 3 * pairs, 16] with pairs = ceil(3 * cin / 2); element
    [g, ky * pairs + i, 2l + s] = the weight of channel 8g + l for tap s of pair i of
    kernel row ky. (Three axes, like GEMM panels, so that either fits one argument.) A row's 3 * cin taps are
    consecutive floats of the image; pair i is taps 2i and 2i + 1, or, when cin is odd,
    the last pair is the last two taps with the first one's weight zero (it belongs to
    the pair before): every pair then reads two floats inside the window."""
    taps = 3 * cin
    C = w.shape[1]
    pairs = -(-taps // 2)
    out = np.zeros((-(-C // 8), 3 * pairs, 16), np.float32)
    for ky in range(3):
        for j in range(taps):
            i, s = (j // 2, j % 2) if j < taps - taps % 2 else (taps // 2, 1)
            for c in range(C):
                out[c // 8, ky * pairs + i, 2 * (c % 8) + s] = w[ky * taps + j, c]
    return out


@njit(cache=True, fastmath=FASTMATH)
def conv3x3_row(x, oy, w, b, stride, pad_top, pad_left, lo, hi, out):
    """Output row `oy` of a full 3x3 conv (the stem).

    x [H, W, Cin] one image, C-contiguous; w from pack_stem; b [C]; out [Wo, C]. For one
    kernel row ky, the window of output pixel q is a run of 3 * Cin consecutive floats of
    image row iy + ky, starting stride * Cin floats after pixel q - 1's. Pixels whose
    window lies inside the image go through _stem_tile, 12 at a time; pixels whose window
    overlaps the padding, and rows too short for one tile, take the checked path.
    """
    H, W, Cin = x.shape
    Wo, C = out.shape
    iy0 = oy * stride - pad_top
    ox_lo = -(-pad_left // stride)  # first pixel whose window starts inside the image
    ox_hi = max(min(Wo, (W - 3 + pad_left) // stride + 1), ox_lo)  # ... and ends inside
    if iy0 >= 0 and iy0 + 2 < H and ox_hi - ox_lo >= 12:
        rows = x[iy0:iy0 + 3].reshape((3, W * Cin))
        start = (ox_lo * stride - pad_left) * Cin  # where pixel ox_lo's window starts
        inside = out[ox_lo:ox_hi]
        if stride == 2 and Cin == 3:  # every MobileNetV2 stem: constants make the tile's
            # addresses fixed offsets from one pointer; else it runs out of registers
            # for them (measured 1.6x slower)
            _stem_pixels(rows, start, 6, 9, w, b, lo, hi, inside)
        else:
            _stem_pixels(rows, start, stride * Cin, 3 * Cin, w, b, lo, hi, inside)
    else:
        ox_lo = ox_hi = 0  # every pixel takes the checked path
    for ox in range(Wo):
        if ox < ox_lo or ox >= ox_hi:
            _conv3x3_padded_pixel(x, iy0, ox * stride - pad_left, w, b, lo, hi, out[ox])


@njit(cache=True, fastmath=FASTMATH, inline="always")  # inlined so that step and taps are constants
def _stem_pixels(rows, start, step, taps, w, b, lo, hi, out):
    """Every pixel of out [P, C] (P >= 12) from its windows rows[ky, start + q * step:][:taps].
    Two groups of 8 channels at a time, then a last group alone. The last tile of a row
    starts early enough to end at the last pixel: it recomputes a few pixels, and no
    tile needs a check for the row's end."""
    P, C = out.shape
    groups = w.shape[0]
    for g in range(0, groups - 1, 2):
        for p in range(0, P, 6):
            _stem_tile16(rows, start, step, taps, w, b, lo, hi, out, min(p, P - 6), g, min(16, C - 8 * g))
    if groups % 2:
        g = groups - 1
        for p in range(0, P, 12):
            _stem_tile8(rows, start, step, taps, w, b, lo, hi, out, min(p, P - 12), g, C - 8 * g)


# The stem's tiles. Each vector holds 8 channels x 2 taps (pack_stem): a 64-bit broadcast
# of two neighbouring floats of the image, times a vector of weights. With one channel per
# lane and one tap per vector instead, a slice of 8 channels (the 32-channel stem at
# t = 4) filled half of each vector, and cost as much as 16 channels. The accumulators
# stay in registers over all 27 taps.

@njit(cache=True, fastmath=FASTMATH, inline="always")
def _stem_tile16(rows, start, step, taps, w, b, lo, hi, out, p, g, n):
    """Pixels p..p+5 x channels 8g..8g+n-1 (8 < n <= 16): groups g and g + 1. Each
    broadcast feeds two FMAs, which is what the broadcasts' throughput needs."""
    pairs = w.shape[1] // 3
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = vsplat(0.0)
    for ky in range(3):
        for i in range(pairs):
            wa, wb = vload(w, (g, ky * pairs + i, 0), LANES), vload(w, (g + 1, ky * pairs + i, 0), LANES)
            o = start + p * step + min(2 * i, taps - 2)  # pixel p's first tap of the pair
            a0, b0 = _fma_pair2(rows, ky, o, wa, wb, a0, b0)
            a1, b1 = _fma_pair2(rows, ky, o + step, wa, wb, a1, b1)
            a2, b2 = _fma_pair2(rows, ky, o + 2 * step, wa, wb, a2, b2)
            a3, b3 = _fma_pair2(rows, ky, o + 3 * step, wa, wb, a3, b3)
            a4, b4 = _fma_pair2(rows, ky, o + 4 * step, wa, wb, a4, b4)
            a5, b5 = _fma_pair2(rows, ky, o + 5 * step, wa, wb, a5, b5)
    bias = vload(b, (8 * g,), n)
    c = 8 * g
    _store_folded(out, p, c, n, bias, lo, hi, a0, b0)
    _store_folded(out, p + 1, c, n, bias, lo, hi, a1, b1)
    _store_folded(out, p + 2, c, n, bias, lo, hi, a2, b2)
    _store_folded(out, p + 3, c, n, bias, lo, hi, a3, b3)
    _store_folded(out, p + 4, c, n, bias, lo, hi, a4, b4)
    _store_folded(out, p + 5, c, n, bias, lo, hi, a5, b5)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fma_pair2(rows, ky, o, wa, wb, a, b):
    pair = vload_pair(rows, (ky, o))
    return vfma(pair, wa, a), vfma(pair, wb, b)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _stem_tile8(rows, start, step, taps, w, b, lo, hi, out, p, g, n):
    """Pixels p..p+11 x channels 8g..8g+n-1 (n <= 8): group g alone."""
    pairs = w.shape[1] // 3
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vsplat(0.0)
    for ky in range(3):
        for i in range(pairs):
            wv = vload(w, (g, ky * pairs + i, 0), LANES)
            o = start + p * step + min(2 * i, taps - 2)  # pixel p's first tap of the pair
            a0, a1, a2, a3 = _fma_windows4(rows, ky, o, step, wv, a0, a1, a2, a3)
            a4, a5, a6, a7 = _fma_windows4(rows, ky, o + 4 * step, step, wv, a4, a5, a6, a7)
            a8, a9, a10, a11 = _fma_windows4(rows, ky, o + 8 * step, step, wv, a8, a9, a10, a11)
    bias = vload(b, (8 * g,), n)
    for q, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
        _store_folded(out, p + q, 8 * g, n, bias, lo, hi, a, a)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _fma_windows4(rows, ky, o, step, wv, a0, a1, a2, a3):
    """A tap pair of four pixels whose windows start at rows[ky, o], o + step, ...
    (Indexing rows itself, not a view of it: making a view calls into the runtime,
    which spilled every accumulator around the call.)"""
    return (vfma(vload_pair(rows, (ky, o)), wv, a0), vfma(vload_pair(rows, (ky, o + step)), wv, a1),
            vfma(vload_pair(rows, (ky, o + 2 * step)), wv, a2), vfma(vload_pair(rows, (ky, o + 3 * step)), wv, a3))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _store_folded(out, q, c, n, bias, lo, hi, u, v):
    """Channels c..c+n-1 of pixel q: the tap pairs of u (and of v past 8 channels)
    folded, plus the bias, clamped."""
    vstore(out, (q, c), n, vclamp(vadd(vfold(u, v), bias), np.float32(lo), np.float32(hi)))


@njit(cache=True, fastmath=FASTMATH)
def _conv3x3_padded_pixel(x, iy0, ix0, w, b, lo, hi, out):
    """One output pixel out [C] whose window may overlap the zero padding: taps on the
    padding are skipped. Each tap's value goes to its lanes of its pair (pack_stem)."""
    H, W, Cin = x.shape
    C = out.shape[0]
    taps = 3 * Cin
    pairs = w.shape[1] // 3
    zero = np.float32(0.0)
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
                    v = x[iy, ix, ci]
                    if j < taps - taps % 2:  # tap j is lane j % 2 of pair j // 2
                        a = vfma(vsplat_pair(v, zero) if j % 2 == 0 else vsplat_pair(zero, v),
                                 vload(w, (g, ky * pairs + j // 2, 0), LANES), a)
                    else:  # the odd last tap: lane 1 of the last pair
                        a = vfma(vsplat_pair(zero, v), vload(w, (g, ky * pairs + taps // 2, 0), LANES), a)
        n = min(8, C - 8 * g)
        vstore(out, (8 * g,), n, vclamp(vadd(vfold(a, a), vload(b, (8 * g,), n)), np.float32(lo), np.float32(hi)))
