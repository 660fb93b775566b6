"""Whole-tensor conv kernels: one call computes one operator over a whole NHWC tensor.

Shapes: x [N, H, W, Cin] float32, C-contiguous; outputs are passed in. Padding is explicit
(top, bottom, left, right) and the output shape must agree with it.
"""
from numba import njit

from .depthwise import depthwise_row
from .gemm import FASTMATH
from .stem import conv3x3_row, pack_stem
from .gemm import gemm


@njit(cache=True)
def _check_out_size(H, W, stride, pads, Ho, Wo):
    if (H + pads[0] + pads[1] - 3) // stride + 1 != Ho or (W + pads[2] + pads[3] - 3) // stride + 1 != Wo:
        raise ValueError("output shape does not match the input shape, stride and padding")


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def pointwise(x, w, b, lo, hi, out, residual, accumulate):
    """1x1 conv as a GEMM over pixels (also the dense classifier), with the epilogue.

    out = clamp((out if accumulate else 0) + x @ w + b, lo, hi) + residual
    x [P, Cin], w [Cin, Cout] as panels (pack_panels), b [Cout], out [P, Cout];
    residual [P, Cout], or an empty [0, Cout] array for none.
    """
    P, Cout = out.shape
    if accumulate:
        for p in range(P):
            for c in range(Cout):
                out[p, c] += b[c]
    gemm(x, w, b, accumulate, lo, hi, out)
    if residual.shape[0] > 0:
        for p in range(P):
            for c in range(Cout):
                out[p, c] += residual[p, c]


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def depthwise3x3(x, w, b, stride, pads, lo, hi, out):
    """3x3 depthwise conv: x [N, H, W, C], w [3, 3, C], b [C], out [N, Ho, Wo, C]."""
    N, H, W, C = x.shape
    _check_out_size(H, W, stride, pads, out.shape[1], out.shape[2])
    for n in range(N):
        for oy in range(out.shape[1]):
            depthwise_row(x[n], H, oy, w, b, stride, pads[0], pads[2], lo, hi, out[n, oy])


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def conv3x3(x, w, b, stride, pads, lo, hi, out):
    """Full 3x3 conv (the stem): x [N, H, W, Cin], w [3, 3, Cin, Cout] (HWIO), out [N, Ho, Wo, Cout]."""
    N, H, W, Cin = x.shape
    _check_out_size(H, W, stride, pads, out.shape[1], out.shape[2])
    w2 = pack_stem(w.reshape((9 * Cin, w.shape[3])), Cin)
    for n in range(N):
        for oy in range(out.shape[1]):
            conv3x3_row(x[n], oy, w2, b, stride, pads[0], pads[2], lo, hi, out[n, oy])
