"""Global average pooling, alone and fused with the last 1x1 conv."""
from numba import njit

from .gemm import FASTMATH, pointwise_row


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def global_avg_pool(x, out):
    """out[n, c] = mean over (h, w) of x[n, h, w, c]; x [N, H, W, C], out [N, C]."""
    N, H, W, C = x.shape
    for n in range(N):
        for c in range(C):
            out[n, c] = 0
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    out[n, c] += x[n, i, j, c]
        inv = 1.0 / (H * W)
        for c in range(C):
            out[n, c] *= inv


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def pointwise_avg_pool(x, w, b, lo, hi, scratch, out):
    """out[n] = mean over pixels of clamp(x[n] @ w + b, lo, hi), computed in chunks.

    x [N, P, Cin] (pixels flattened), w [Cin, Cout] as panels (pack_panels), scratch [chunk, Cout], out [N, Cout].
    The conv output exists only `chunk` pixels at a time: the last conv's 7x7x1280
    tensor is never whole unless the scratch is sized for all pixels.
    """
    N, P, Cin = x.shape
    chunk, Cout = scratch.shape
    for n in range(N):
        for c in range(Cout):
            out[n, c] = 0
        for p0 in range(0, P, chunk):
            rows = min(chunk, P - p0)
            part = scratch[:rows]
            pointwise_row(x[n, p0:p0 + rows], w, b, lo, hi, part)
            for p in range(rows):
                for c in range(Cout):
                    out[n, c] += part[p, c]
        inv = 1.0 / P
        for c in range(Cout):
            out[n, c] *= inv
