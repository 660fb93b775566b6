"""The one GEMM of the engine, register-blocked: every 1x1 conv and the classifier.

    out = clamp((out if accumulate else b) + x @ w, lo, hi)
    x [P, K] pixels by input channels, w [K, C] as panels (pack_panels), b [C], out [P, C]

The output is cut into tiles of a few pixels by a few 16-lane vectors of channels. A
tile's accumulators stay in registers for the whole sum over k: per k, the tile loads
one vector of weights per channel vector and one scalar of x per pixel, and does
pixels x vectors FMAs. That ratio is what makes it fast: the 6 x 4 tile does 24 FMAs
for 10 loads, where the plain loop did one load and one store per FMA.

  wide tiles   6 (or 4) pixels x 64 channels (4 vectors): every chunk of more than 32
               channels. Six pixels reuse each weight load more (24 FMAs for 10 loads),
               but in short rows (under 24 pixels: the 7- and 14-pixel rows of the late
               blocks) the padding to a multiple of 6 costs more than that gains, so
               those use 4 (measured on AVX-512: 6 is 10-50% faster from 28 pixels up,
               10-40% slower at 7 and 14).
  mid tile     6 pixels x 48 channels (3 vectors): a last chunk of 33-48 channels
               (slices such as 144 / 4 = 36; the wide tile would waste a quarter or more)
  narrow tile  8 pixels x 32 channels (2 vectors): the narrow outputs (17-32 channels:
               the early projections, and slices) and the last 17-32 channels of a row
  thin tile    12 pixels x 16 channels (1 vector): the last <= 16 channels (the 16-channel
               projection, the stem's and other slices of t >= 4)

Edges: lanes past the end of a row are masked (neither read nor written); pixels past
the last one recompute the last pixel, whose stores then write the same values twice.
Each output sums over k in order, whatever the tiling, so results do not depend on it.

Weights come packed in panels of PANEL columns, [ceil(C / PANEL), K, PANEL], zero-padded
(PANEL is 64 where a tile is 4 vectors wide, 16 where it is one): the panel a tile reads
is one contiguous stream, which the hardware prefetcher follows (unpacked, the late
layers ran 20% slower). A row range of a panel array, w[:, k0:k1], is again valid: the
GEMM over those inputs.
"""
import numpy as np
from numba import njit

from .simd import LANES, prefetch, vbroadcast, vbroadcast8, vclamp, vfma, vload, vload8, vsplat, vstore, vstore8
from .target import current

# 'contract' lets LLVM fuse a*b+c into one FMA: faster, and one rounding instead of two.
# No reassociation flags: every loop runs over independent output channels, so nothing
# reorders a sum, and results do not depend on the SIMD width.
FASTMATH = {"contract"}
WIDE, MID, NARROW, THIN = 4 * LANES, 3 * LANES, 2 * LANES, LANES  # channels per tile
SHORT_ROW = 24  # fewer pixels than this: 4-pixel wide tiles
_TILES = current().tiles
PANEL = _TILES.panel  # 64 for the tiles of 4 vectors; 16 where a tile is one vector wide
COLUMNS = _TILES.gemm_vectors == 1  # one vector of channels per tile (AVX2, 128-bit)
COLUMN_PIXELS = 6
HALF = LANES // 2  # channels of a half column (_half_column)
TAIL_COLUMNS = 4  # panels of the one-pixel tile that takes the pixels after the last 6 (_pixel_tile)
AHEAD = 32  # inputs ahead that a column's first tile asks for its panel's rows (_column)
BLOCK_FLOATS = 65536  # x rows of a pixel block (256 KiB): see _gemm_columns


@njit(cache=True)
def panels_shape(K, C):
    """The shape pack_panels gives w [K, C]."""
    return -(-C // PANEL), K, PANEL


@njit(cache=True)
def pack_panels(w):
    """w [K, C] as panels [ceil(C / PANEL), K, PANEL] for gemm, the last one zero-padded."""
    K, C = w.shape
    out = np.zeros(panels_shape(K, C), np.float32)
    for c in range(C):
        for k in range(K):
            out[c // PANEL, k, c % PANEL] = w[k, c]
    return out


@njit(cache=True, fastmath=FASTMATH, inline="always")
def gemm(x, w, b, accumulate, lo, hi, out):
    # Inlined into its callers, so that the tiles below compile for one signature.
    C = out.shape[1]
    # A tile's accumulators start from row p * step of `init`: the output itself, or the
    # bias as a one-row matrix (a branch on `accumulate` in the tiles made them 3-4x slower).
    init = out if accumulate else b.reshape((1, C))
    step = np.int64(accumulate)  # 1 or 0, never a compile-time constant: one signature below
    # w, init and out as views of any layout (contiguous or a slice's rows), x contiguous
    # from every caller: one compiled signature of the tiles (cold start).
    K = x.shape[1]
    _tiled(x, w[:, 0:K], init[:, 0:C], step, lo, hi, out[:, 0:C])


@njit(cache=True, fastmath=FASTMATH, inline="always")  # no level of its own to compile
def pointwise_row(x, w, b, lo, hi, out):
    """A 1x1 conv with the epilogue: out = clamp(x @ w + b, lo, hi); x [P, Cin], w [Cin, C]
    as panels, out [P, C]."""
    gemm(x, w, b, False, lo, hi, out)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _gemm_tiles(x, w, init, step, lo, hi, out):
    """The GEMM by the wide, mid, narrow and thin tiles (the module's docstring), for
    targets whose registers hold 6 pixels x 4 vectors (AVX-512)."""
    P, C = out.shape
    c = 0  # always a multiple of 64 (a panel's start): only a row's last chunk is narrower
    while c < C:
        width = C - c
        if width > MID:
            n0, n1, n2, n3 = _lanes(width, 0), _lanes(width, 1), _lanes(width, 2), _lanes(width, 3)
            if P < SHORT_ROW:
                for p in range(0, P, 4):
                    _wide_tile4(x, w, init, step, lo, hi, out, p, c, n0, n1, n2, n3)
            else:
                for p in range(0, P, 6):
                    _wide_tile6(x, w, init, step, lo, hi, out, p, c, n0, n1, n2, n3)
            c += WIDE
        elif width > NARROW:
            for p in range(0, P, 6):
                _mid_tile(x, w, init, step, lo, hi, out, p, c, _lanes(width, 2))
            c += MID
        elif width > THIN:
            for p in range(0, P, 8):
                _narrow_tile(x, w, init, step, lo, hi, out, p, c, _lanes(width, 1))
            c += NARROW
        else:
            for p in range(0, P, 12):
                _thin_tile(x, w, init, step, lo, hi, out, p, c, width)
            c += THIN


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _gemm_columns(x, w, init, step, lo, hi, out):
    """The GEMM by tiles of 6 pixels x 16 channels, for targets whose registers hold
    one such tile and no wider (AVX2: 12 ymm accumulators of 16).

    The weights of 16 channels (one panel, PANEL = 16) are one contiguous stream of
    64 bytes per input. The pixels go in blocks whose rows of x (at most BLOCK_FLOATS)
    stay in L2 while every panel passes over them: x [12544, 16] of the first expansion
    (800 KiB) was otherwise read from L3 once per 16 output channels.

    The pixels after the last 6 go through each group of four panels right after its
    columns, while those panels are still in L2: after all columns, as before, they
    read every weight again from L3 (the 7x7 blocks' 0.6 MB a layer; a row of 7 pixels
    of rows=True ran 9% slower)."""
    P, K = x.shape
    C = out.shape[1]
    block = max(BLOCK_FLOATS // max(K, 1) // COLUMN_PIXELS, 1) * COLUMN_PIXELS
    for p0 in range(0, P, block):
        p1 = min(p0 + block, P)
        whole = p0 + (p1 - p0) // COLUMN_PIXELS * COLUMN_PIXELS
        for g in range(0, C, TAIL_COLUMNS * LANES):
            for c in range(g, min(g + TAIL_COLUMNS * LANES, C), LANES):
                _column(x, w, init, step, lo, hi, out, p0, whole, c, min(LANES, C - c))
            for p in range(whole, p1):
                _pixel_tile(x, w, init, step, lo, hi, out, p, g)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _column(x, w, init, step, lo, hi, out, p0, p1, c, n):
    """Pixels p0..p1-1 (a multiple of 6 of them) x channels c..c+15 (n live lanes), 6
    pixels a tile. A call of its own: inlined into the loops above, the tile lost
    registers to them. The pixels of a tile are p..p+5 in order, so that their rows of x
    are one pointer and fixed strides.

    The first tile reads the panel from L3 or memory (the late layers' weights do not
    stay in L2 from one forward to the next), and asks for each row AHEAD inputs before
    it needs it; the tiles after it find the panel in L1 or L2. On the 7x7 blocks' 1x1
    shapes with their weights out of cache: 0.87x the time for a row of 7 pixels,
    0.95-0.99x for the whole 49 (AHEAD 16 to 64 measured alike)."""
    if n <= HALF:
        _half_column(x, w, init, step, lo, hi, out, p0, p1, c, n)
        return
    if p1 > p0:
        _column_tile6(x, w, init, step, lo, hi, out, p0, p0 + 1, p0 + 2, p0 + 3, p0 + 4, p0 + 5, c, n, True)
    for p in range(p0 + 6, p1, 6):
        _column_tile6(x, w, init, step, lo, hi, out, p, p + 1, p + 2, p + 3, p + 4, p + 5, c, n, False)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _half_column(x, w, init, step, lo, hi, out, p0, p1, c, n):
    """The last channels of a row 8 or fewer past a multiple of 16 (the 24-channel
    projections of blocks 1 and 2): pixels p0..p1-1 (a multiple of 6 of them) x n <= 8
    channels on half vectors (one ymm), 12 pixels a tile: 12 accumulators, as the
    16-channel tile has. There, half of every FMA was on the panel's zero padding
    (3136 x 96 -> 24 ran at 48% of the AVX2 peak, where other 1x1 layers ran at 60-70%).
    A last 6 pixels take a tile whose other 6 repeat pixel p1 - 1."""
    q = p1 - 1
    for p in range(p0, p1, 12):
        _half_tile12(x, w, init, step, lo, hi, out, p, p + 1, p + 2, p + 3, p + 4, p + 5, min(p + 6, q),
                     min(p + 7, q), min(p + 8, q), min(p + 9, q), min(p + 10, q), min(p + 11, q), c, n)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _half_tile12(x, w, init, step, lo, hi, out, p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, c, n):
    """Pixels p0..p11 x channels c..c+n-1 (n <= 8): 12 half-vector accumulators, one
    weight vector and one broadcast."""
    K = x.shape[1]
    a0, a1 = vload8(init, (p0 * step, c), n), vload8(init, (p1 * step, c), n)
    a2, a3 = vload8(init, (p2 * step, c), n), vload8(init, (p3 * step, c), n)
    a4, a5 = vload8(init, (p4 * step, c), n), vload8(init, (p5 * step, c), n)
    a6, a7 = vload8(init, (p6 * step, c), n), vload8(init, (p7 * step, c), n)
    a8, a9 = vload8(init, (p8 * step, c), n), vload8(init, (p9 * step, c), n)
    a10, a11 = vload8(init, (p10 * step, c), n), vload8(init, (p11 * step, c), n)
    i = c // PANEL
    for k in range(K):
        wv = vload8(w, (i, k, 0), HALF)  # the panel is zero-padded: no mask
        a0, a1 = vfma(vbroadcast8(x, (p0, k)), wv, a0), vfma(vbroadcast8(x, (p1, k)), wv, a1)
        a2, a3 = vfma(vbroadcast8(x, (p2, k)), wv, a2), vfma(vbroadcast8(x, (p3, k)), wv, a3)
        a4, a5 = vfma(vbroadcast8(x, (p4, k)), wv, a4), vfma(vbroadcast8(x, (p5, k)), wv, a5)
        a6, a7 = vfma(vbroadcast8(x, (p6, k)), wv, a6), vfma(vbroadcast8(x, (p7, k)), wv, a7)
        a8, a9 = vfma(vbroadcast8(x, (p8, k)), wv, a8), vfma(vbroadcast8(x, (p9, k)), wv, a9)
        a10, a11 = vfma(vbroadcast8(x, (p10, k)), wv, a10), vfma(vbroadcast8(x, (p11, k)), wv, a11)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    vstore8(out, (p0, c), n, vclamp(a0, lo32, hi32))
    vstore8(out, (p1, c), n, vclamp(a1, lo32, hi32))
    vstore8(out, (p2, c), n, vclamp(a2, lo32, hi32))
    vstore8(out, (p3, c), n, vclamp(a3, lo32, hi32))
    vstore8(out, (p4, c), n, vclamp(a4, lo32, hi32))
    vstore8(out, (p5, c), n, vclamp(a5, lo32, hi32))
    vstore8(out, (p6, c), n, vclamp(a6, lo32, hi32))
    vstore8(out, (p7, c), n, vclamp(a7, lo32, hi32))
    vstore8(out, (p8, c), n, vclamp(a8, lo32, hi32))
    vstore8(out, (p9, c), n, vclamp(a9, lo32, hi32))
    vstore8(out, (p10, c), n, vclamp(a10, lo32, hi32))
    vstore8(out, (p11, c), n, vclamp(a11, lo32, hi32))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _pixel_tile(x, w, init, step, lo, hi, out, p, c):
    """One pixel x channels c..c+63 (four panels; past the last channel, the last panel
    again: it computes and stores the same values twice). The pixels after the last
    whole 6-pixel tile: a 6-pixel tile costs the same however many of its pixels are
    real, so the single pixel after 48 (a 7x7 layer) cost a ninth of the layer, the
    classifier's one pixel (batch 1) six times its work, and two threads splitting 49
    pixels did 4 and 5 tiles. Eight ymm accumulators in four chains keep the FMA units
    as busy as a latency of 4 to 5 cycles allows."""
    C, last = out.shape[1], (out.shape[1] - 1) // LANES
    i0 = c // PANEL
    i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
    n0, n1 = min(LANES, C - i0 * LANES), min(LANES, C - i1 * LANES)
    n2, n3 = min(LANES, C - i2 * LANES), min(LANES, C - i3 * LANES)
    a0, a1 = vload(init, (p * step, i0 * LANES), n0), vload(init, (p * step, i1 * LANES), n1)
    a2, a3 = vload(init, (p * step, i2 * LANES), n2), vload(init, (p * step, i3 * LANES), n3)
    for k in range(x.shape[1]):
        v = vbroadcast(x, (p, k))
        a0, a1 = vfma(v, vload(w, (i0, k, 0), LANES), a0), vfma(v, vload(w, (i1, k, 0), LANES), a1)
        a2, a3 = vfma(v, vload(w, (i2, k, 0), LANES), a2), vfma(v, vload(w, (i3, k, 0), LANES), a3)
    _store_column(out, p, i0 * LANES, n0, lo, hi, a0)
    _store_column(out, p, i1 * LANES, n1, lo, hi, a1)
    _store_column(out, p, i2 * LANES, n2, lo, hi, a2)
    _store_column(out, p, i3 * LANES, n3, lo, hi, a3)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _column_tile6(x, w, init, step, lo, hi, out, p0, p1, p2, p3, p4, p5, c, n, ahead):
    """Pixels p0..p5 x channels c..c+15, n live lanes: 12 ymm accumulators on AVX2, 2
    weight registers and one broadcast (XNNPACK's 6x16 for FMA3)."""
    K = x.shape[1]
    a0, a1 = vload(init, (p0 * step, c), n), vload(init, (p1 * step, c), n)
    a2, a3 = vload(init, (p2 * step, c), n), vload(init, (p3 * step, c), n)
    a4, a5 = vload(init, (p4 * step, c), n), vload(init, (p5 * step, c), n)
    i = c // PANEL
    for k in range(K):
        if ahead:
            prefetch(w, (i, k + AHEAD, 0))
        wv = vload(w, (i, k, 0), LANES)  # the panel is zero-padded: no mask
        a0, a1 = vfma(vbroadcast(x, (p0, k)), wv, a0), vfma(vbroadcast(x, (p1, k)), wv, a1)
        a2, a3 = vfma(vbroadcast(x, (p2, k)), wv, a2), vfma(vbroadcast(x, (p3, k)), wv, a3)
        a4, a5 = vfma(vbroadcast(x, (p4, k)), wv, a4), vfma(vbroadcast(x, (p5, k)), wv, a5)
    _store_column(out, p0, c, n, lo, hi, a0)
    _store_column(out, p1, c, n, lo, hi, a1)
    _store_column(out, p2, c, n, lo, hi, a2)
    _store_column(out, p3, c, n, lo, hi, a3)
    _store_column(out, p4, c, n, lo, hi, a4)
    _store_column(out, p5, c, n, lo, hi, a5)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _store_column(out, p, c, n, lo, hi, v):
    """out[p, c:c + n] = clamp(v) (vstore stores a full vector without a mask)."""
    vstore(out, (p, c), n, vclamp(v, np.float32(lo), np.float32(hi)))


@njit(cache=True)
def _lanes(width, v):
    """How many of the `width` remaining channels fall in vector v (16 lanes) of a tile."""
    return min(max(width - LANES * v, 0), LANES)


# A tile is written out pixel by pixel with the helpers below: `_start4` gives a pixel's
# four starting accumulators (a row of `init`), `_fma4` adds x[p, k] times the
# four weight vectors of row k, `_store4` writes them back through the clamp.

@njit(cache=True, fastmath=FASTMATH, inline="always")
def _wide_tile4(x, w, init, step, lo, hi, out, p, c, n0, n1, n2, n3):
    """Pixels p..p+3 x channels c..c+63; n0..n3 live lanes in each of the 4 vectors."""
    P, K = x.shape
    p1, p2, p3 = min(p + 1, P - 1), min(p + 2, P - 1), min(p + 3, P - 1)
    a00, a01, a02, a03 = _start4(init, p * step, c, n0, n1, n2, n3)
    a10, a11, a12, a13 = _start4(init, p1 * step, c, n0, n1, n2, n3)
    a20, a21, a22, a23 = _start4(init, p2 * step, c, n0, n1, n2, n3)
    a30, a31, a32, a33 = _start4(init, p3 * step, c, n0, n1, n2, n3)
    ahead = p == 0 and c + PANEL < out.shape[1]  # the first tile of a chunk fetches the next panel
    for k in range(K):
        if ahead:
            _prefetch_row(w, c // PANEL + 1, k)
        w0, w1, w2, w3 = _weights4(w, k, c, n0, n1, n2, n3)
        a00, a01, a02, a03 = _fma4(x[p, k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _fma4(x[p1, k], w0, w1, w2, w3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _fma4(x[p2, k], w0, w1, w2, w3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _fma4(x[p3, k], w0, w1, w2, w3, a30, a31, a32, a33)
    _store4(out, p, c, n0, n1, n2, n3, lo, hi, a00, a01, a02, a03)
    _store4(out, p1, c, n0, n1, n2, n3, lo, hi, a10, a11, a12, a13)
    _store4(out, p2, c, n0, n1, n2, n3, lo, hi, a20, a21, a22, a23)
    _store4(out, p3, c, n0, n1, n2, n3, lo, hi, a30, a31, a32, a33)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _wide_tile6(x, w, init, step, lo, hi, out, p, c, n0, n1, n2, n3):
    """Pixels p..p+5 x channels c..c+63; n0..n3 live lanes in each of the 4 vectors."""
    P, K = x.shape
    last = P - 1
    p1, p2, p3, p4, p5 = min(p + 1, last), min(p + 2, last), min(p + 3, last), min(p + 4, last), min(p + 5, last)
    a00, a01, a02, a03 = _start4(init, p * step, c, n0, n1, n2, n3)
    a10, a11, a12, a13 = _start4(init, p1 * step, c, n0, n1, n2, n3)
    a20, a21, a22, a23 = _start4(init, p2 * step, c, n0, n1, n2, n3)
    a30, a31, a32, a33 = _start4(init, p3 * step, c, n0, n1, n2, n3)
    a40, a41, a42, a43 = _start4(init, p4 * step, c, n0, n1, n2, n3)
    a50, a51, a52, a53 = _start4(init, p5 * step, c, n0, n1, n2, n3)
    ahead = p == 0 and c + PANEL < out.shape[1]  # the first tile of a chunk fetches the next panel
    for k in range(K):
        if ahead:
            _prefetch_row(w, c // PANEL + 1, k)
        w0, w1, w2, w3 = _weights4(w, k, c, n0, n1, n2, n3)
        a00, a01, a02, a03 = _fma4(x[p, k], w0, w1, w2, w3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _fma4(x[p1, k], w0, w1, w2, w3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _fma4(x[p2, k], w0, w1, w2, w3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _fma4(x[p3, k], w0, w1, w2, w3, a30, a31, a32, a33)
        a40, a41, a42, a43 = _fma4(x[p4, k], w0, w1, w2, w3, a40, a41, a42, a43)
        a50, a51, a52, a53 = _fma4(x[p5, k], w0, w1, w2, w3, a50, a51, a52, a53)
    _store4(out, p, c, n0, n1, n2, n3, lo, hi, a00, a01, a02, a03)
    _store4(out, p1, c, n0, n1, n2, n3, lo, hi, a10, a11, a12, a13)
    _store4(out, p2, c, n0, n1, n2, n3, lo, hi, a20, a21, a22, a23)
    _store4(out, p3, c, n0, n1, n2, n3, lo, hi, a30, a31, a32, a33)
    _store4(out, p4, c, n0, n1, n2, n3, lo, hi, a40, a41, a42, a43)
    _store4(out, p5, c, n0, n1, n2, n3, lo, hi, a50, a51, a52, a53)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _mid_tile(x, w, init, step, lo, hi, out, p, c, n2):
    """Pixels p..p+5 x channels c..c+47; the first two vectors full, n2 live lanes in the third."""
    P, K = x.shape
    last = P - 1
    p1, p2, p3, p4, p5 = min(p + 1, last), min(p + 2, last), min(p + 3, last), min(p + 4, last), min(p + 5, last)
    a00, a01, a02 = _start3(init, p * step, c, n2)
    a10, a11, a12 = _start3(init, p1 * step, c, n2)
    a20, a21, a22 = _start3(init, p2 * step, c, n2)
    a30, a31, a32 = _start3(init, p3 * step, c, n2)
    a40, a41, a42 = _start3(init, p4 * step, c, n2)
    a50, a51, a52 = _start3(init, p5 * step, c, n2)
    i = c // PANEL
    for k in range(K):
        w0, w1, w2 = vload(w, (i, k, 0), LANES), vload(w, (i, k, LANES), LANES), vload(w, (i, k, 2 * LANES), n2)
        a00, a01, a02 = _fma3(x[p, k], w0, w1, w2, a00, a01, a02)
        a10, a11, a12 = _fma3(x[p1, k], w0, w1, w2, a10, a11, a12)
        a20, a21, a22 = _fma3(x[p2, k], w0, w1, w2, a20, a21, a22)
        a30, a31, a32 = _fma3(x[p3, k], w0, w1, w2, a30, a31, a32)
        a40, a41, a42 = _fma3(x[p4, k], w0, w1, w2, a40, a41, a42)
        a50, a51, a52 = _fma3(x[p5, k], w0, w1, w2, a50, a51, a52)
    _store3(out, p, c, n2, lo, hi, a00, a01, a02)
    _store3(out, p1, c, n2, lo, hi, a10, a11, a12)
    _store3(out, p2, c, n2, lo, hi, a20, a21, a22)
    _store3(out, p3, c, n2, lo, hi, a30, a31, a32)
    _store3(out, p4, c, n2, lo, hi, a40, a41, a42)
    _store3(out, p5, c, n2, lo, hi, a50, a51, a52)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _narrow_tile(x, w, init, step, lo, hi, out, p, c, n1):
    """Pixels p..p+7 x channels c..c+31; the first vector full, n1 live lanes in the second."""
    n0 = LANES
    P, K = x.shape
    last = P - 1
    p1, p2, p3 = min(p + 1, last), min(p + 2, last), min(p + 3, last)
    p4, p5, p6, p7 = min(p + 4, last), min(p + 5, last), min(p + 6, last), min(p + 7, last)
    a00, a01 = _start2(init, p * step, c, n0, n1)
    a10, a11 = _start2(init, p1 * step, c, n0, n1)
    a20, a21 = _start2(init, p2 * step, c, n0, n1)
    a30, a31 = _start2(init, p3 * step, c, n0, n1)
    a40, a41 = _start2(init, p4 * step, c, n0, n1)
    a50, a51 = _start2(init, p5 * step, c, n0, n1)
    a60, a61 = _start2(init, p6 * step, c, n0, n1)
    a70, a71 = _start2(init, p7 * step, c, n0, n1)
    for k in range(K):
        w0, w1 = vload(w, (c // PANEL, k, 0), n0), vload(w, (c // PANEL, k, LANES), n1)
        a00, a01 = _fma2(x[p, k], w0, w1, a00, a01)
        a10, a11 = _fma2(x[p1, k], w0, w1, a10, a11)
        a20, a21 = _fma2(x[p2, k], w0, w1, a20, a21)
        a30, a31 = _fma2(x[p3, k], w0, w1, a30, a31)
        a40, a41 = _fma2(x[p4, k], w0, w1, a40, a41)
        a50, a51 = _fma2(x[p5, k], w0, w1, a50, a51)
        a60, a61 = _fma2(x[p6, k], w0, w1, a60, a61)
        a70, a71 = _fma2(x[p7, k], w0, w1, a70, a71)
    _store2(out, p, c, n0, n1, lo, hi, a00, a01)
    _store2(out, p1, c, n0, n1, lo, hi, a10, a11)
    _store2(out, p2, c, n0, n1, lo, hi, a20, a21)
    _store2(out, p3, c, n0, n1, lo, hi, a30, a31)
    _store2(out, p4, c, n0, n1, lo, hi, a40, a41)
    _store2(out, p5, c, n0, n1, lo, hi, a50, a51)
    _store2(out, p6, c, n0, n1, lo, hi, a60, a61)
    _store2(out, p7, c, n0, n1, lo, hi, a70, a71)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _thin_tile(x, w, init, step, lo, hi, out, p, c, n):
    """Pixels p..p+11 x channels c..c+15; n live lanes."""
    K = x.shape[1]
    p, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11 = pixels12(p, x.shape[0])
    a0, a1, a2, a3 = _start_pixels4(init, step, p, p1, p2, p3, c, n)
    a4, a5, a6, a7 = _start_pixels4(init, step, p4, p5, p6, p7, c, n)
    a8, a9, a10, a11 = _start_pixels4(init, step, p8, p9, p10, p11, c, n)
    i = c // PANEL
    for k in range(K):
        wv = vload(w, (i, k, 0), n)
        a0, a1, a2, a3 = _fma_pixels4(x, k, p, p1, p2, p3, wv, a0, a1, a2, a3)
        a4, a5, a6, a7 = _fma_pixels4(x, k, p4, p5, p6, p7, wv, a4, a5, a6, a7)
        a8, a9, a10, a11 = _fma_pixels4(x, k, p8, p9, p10, p11, wv, a8, a9, a10, a11)
    _store_pixels4(out, p, p1, p2, p3, c, n, lo, hi, a0, a1, a2, a3)
    _store_pixels4(out, p4, p5, p6, p7, c, n, lo, hi, a4, a5, a6, a7)
    _store_pixels4(out, p8, p9, p10, p11, c, n, lo, hi, a8, a9, a10, a11)


@njit(cache=True)
def pixels12(p, P):
    """The rows p..p+11 of a 12-pixel tile; those past the last row P - 1 are that row."""
    last = P - 1
    return (p, min(p + 1, last), min(p + 2, last), min(p + 3, last), min(p + 4, last), min(p + 5, last),
            min(p + 6, last), min(p + 7, last), min(p + 8, last), min(p + 9, last), min(p + 10, last),
            min(p + 11, last))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _start_pixels4(init, step, q0, q1, q2, q3, c, n):
    return (vload(init, (q0 * step, c), n), vload(init, (q1 * step, c), n),
            vload(init, (q2 * step, c), n), vload(init, (q3 * step, c), n))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _fma_pixels4(x, k, q0, q1, q2, q3, wv, a0, a1, a2, a3):
    return (vfma(vsplat(x[q0, k]), wv, a0), vfma(vsplat(x[q1, k]), wv, a1),
            vfma(vsplat(x[q2, k]), wv, a2), vfma(vsplat(x[q3, k]), wv, a3))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _store_pixels4(out, q0, q1, q2, q3, c, n, lo, hi, v0, v1, v2, v3):
    lo32, hi32 = np.float32(lo), np.float32(hi)
    vstore(out, (q0, c), n, vclamp(v0, lo32, hi32))
    vstore(out, (q1, c), n, vclamp(v1, lo32, hi32))
    vstore(out, (q2, c), n, vclamp(v2, lo32, hi32))
    vstore(out, (q3, c), n, vclamp(v3, lo32, hi32))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _start4(init, i, c, n0, n1, n2, n3):
    return vload(init, (i, c), n0), vload(init, (i, c + LANES), n1), vload(init, (i, c + 2 * LANES), n2), vload(init, (i, c + 3 * LANES), n3)


@njit(cache=True, _nrt=False)
def _prefetch_row(w, i, k):
    """The four cache lines of row k of panel i."""
    prefetch(w, (i, k, 0))
    prefetch(w, (i, k, LANES))
    prefetch(w, (i, k, 2 * LANES))
    prefetch(w, (i, k, 3 * LANES))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _weights4(w, k, c, n0, n1, n2, n3):
    """Row k of the panel that starts at channel c (a multiple of 64)."""
    i = c // PANEL
    return vload(w, (i, k, 0), n0), vload(w, (i, k, LANES), n1), vload(w, (i, k, 2 * LANES), n2), vload(w, (i, k, 3 * LANES), n3)


@njit(cache=True, fastmath=FASTMATH)
def _fma4(xv, w0, w1, w2, w3, a0, a1, a2, a3):
    s = vsplat(xv)
    return vfma(s, w0, a0), vfma(s, w1, a1), vfma(s, w2, a2), vfma(s, w3, a3)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _store4(out, p, c, n0, n1, n2, n3, lo, hi, v0, v1, v2, v3):
    lo32, hi32 = np.float32(lo), np.float32(hi)
    vstore(out, (p, c), n0, vclamp(v0, lo32, hi32))
    vstore(out, (p, c + LANES), n1, vclamp(v1, lo32, hi32))
    vstore(out, (p, c + 2 * LANES), n2, vclamp(v2, lo32, hi32))
    vstore(out, (p, c + 3 * LANES), n3, vclamp(v3, lo32, hi32))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _start3(init, i, c, n2):
    return vload(init, (i, c), LANES), vload(init, (i, c + LANES), LANES), vload(init, (i, c + 2 * LANES), n2)


@njit(cache=True, fastmath=FASTMATH)
def _fma3(xv, w0, w1, w2, a0, a1, a2):
    s = vsplat(xv)
    return vfma(s, w0, a0), vfma(s, w1, a1), vfma(s, w2, a2)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _store3(out, p, c, n2, lo, hi, v0, v1, v2):
    lo32, hi32 = np.float32(lo), np.float32(hi)
    vstore(out, (p, c), LANES, vclamp(v0, lo32, hi32))
    vstore(out, (p, c + LANES), LANES, vclamp(v1, lo32, hi32))
    vstore(out, (p, c + 2 * LANES), n2, vclamp(v2, lo32, hi32))


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _start2(init, i, c, n0, n1):
    return vload(init, (i, c), n0), vload(init, (i, c + LANES), n1)


@njit(cache=True, fastmath=FASTMATH)
def _fma2(xv, w0, w1, a0, a1):
    s = vsplat(xv)
    return vfma(s, w0, a0), vfma(s, w1, a1)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _store2(out, p, c, n0, n1, lo, hi, v0, v1):
    lo32, hi32 = np.float32(lo), np.float32(hi)
    vstore(out, (p, c), n0, vclamp(v0, lo32, hi32))
    vstore(out, (p, c + LANES), n1, vclamp(v1, lo32, hi32))


# The target's path, chosen here in Python, so that only its code is typed and compiled.
_tiled = _gemm_columns if COLUMNS else _gemm_tiles
