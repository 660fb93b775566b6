"""Naive NumPy reference kernels, written like TFLite's reference kernels: explicit
`out_y * stride - pad` origins, bounds checks for the padding, the activation as a
min/max clamp. Slow and obviously right; the Numba kernels must agree with them."""
import numpy as np


def pointwise(x, w, b, lo, hi, residual=None, accumulate_into=None):
    """x [P, Cin] @ w [Cin, Cout] + b, clamped, (+ residual)."""
    acc = x.astype(np.float64) @ w.astype(np.float64) + b
    if accumulate_into is not None:
        acc = acc + accumulate_into
    out = np.minimum(np.maximum(acc, lo), hi)
    if residual is not None:
        out = out + residual
    return out.astype(np.float32)


def depthwise3x3(x, w, b, stride, pads, lo, hi):
    N, H, W, C = x.shape
    top, bottom, left, right = pads
    Ho = (H + top + bottom - 3) // stride + 1
    Wo = (W + left + right - 3) // stride + 1
    out = np.zeros((N, Ho, Wo, C))
    for n in range(N):
        for out_y in range(Ho):
            for out_x in range(Wo):
                in_y0, in_x0 = out_y * stride - top, out_x * stride - left
                acc = b.astype(np.float64).copy()
                for ky in range(3):
                    for kx in range(3):
                        in_y, in_x = in_y0 + ky, in_x0 + kx
                        if 0 <= in_y < H and 0 <= in_x < W:
                            acc += x[n, in_y, in_x, :] * w[ky, kx, :]
                out[n, out_y, out_x] = np.minimum(np.maximum(acc, lo), hi)
    return out.astype(np.float32)


def conv3x3(x, w, b, stride, pads, lo, hi):
    """w [3, 3, Cin, Cout] HWIO."""
    N, H, W, Cin = x.shape
    top, bottom, left, right = pads
    Ho = (H + top + bottom - 3) // stride + 1
    Wo = (W + left + right - 3) // stride + 1
    out = np.zeros((N, Ho, Wo, w.shape[3]))
    for n in range(N):
        for out_y in range(Ho):
            for out_x in range(Wo):
                in_y0, in_x0 = out_y * stride - top, out_x * stride - left
                acc = b.astype(np.float64).copy()
                for ky in range(3):
                    for kx in range(3):
                        in_y, in_x = in_y0 + ky, in_x0 + kx
                        if 0 <= in_y < H and 0 <= in_x < W:
                            acc += x[n, in_y, in_x, :] @ w[ky, kx].astype(np.float64)
                out[n, out_y, out_x] = np.minimum(np.maximum(acc, lo), hi)
    return out.astype(np.float32)


def global_avg_pool(x):
    return x.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
