"""The epilogue every conv ends in: out = clamp(acc + bias, lo, hi).

RELU6 and LINEAR are its two (lo, hi): the ReLU6 after an expansion, a depthwise or the
head conv, and the linear bottleneck of a projection and the classifier.
"""
import numpy as np
from numba import njit

from .gemm import FASTMATH

RELU6 = (0.0, 6.0)
LINEAR = (-np.inf, np.inf)


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def fill_bias(out, b):
    """out[p, :] = b for every row p of out [P, C]."""
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = b[c]


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def clamp(out, lo, hi):
    """The epilogue's clamp, in place on out [P, C]; LINEAR leaves it as it is."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 == -np.inf and hi32 == np.inf:
        return
    P, C = out.shape
    for p in range(P):
        for c in range(C):
            out[p, c] = min(max(out[p, c], lo32), hi32)
