"""Times of the int8 depthwise, stem and ADD kernels on MobileNetV2's shapes (median of
repeats, microseconds): `python benchmarks/qkernels.py`, NUMBA_CPU_NAME=haswell for AVX2."""
import sys, time
import numpy as np
from mnv2engine.kernels.qdepthwise import pack_qdepthwise, qdepthwise3x3
from mnv2engine.kernels.qconv import pack_qconv3x3, qconv3x3
from mnv2engine.kernels.qops import qadd

rng = np.random.default_rng(0)

def best(f, n=30):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e6

def i32(a): return np.ascontiguousarray(a, np.int32)

for H, C, s in [(112, 96, 2), (56, 144, 1), (28, 192, 1), (14, 576, 1), (7, 960, 1), (112, 32, 1)]:
    x = rng.integers(-128, 128, (H, H, C)).astype(np.int8)
    w = rng.integers(-128, 128, (3, 3, C)).astype(np.int8)
    wc = pack_qdepthwise(w, 0)
    bias = i32(rng.integers(-20000, 20000, C)); mult = i32(rng.integers(1 << 30, 1 << 31, C)); shift = i32(rng.integers(-12, -6, C))
    Ho = (H + s - 1) // s
    top = 0 if s == 2 else 1
    out = np.empty((Ho, Ho, C), np.int8)
    print(f"dw {H}x{H}x{C} s{s}: {best(lambda: qdepthwise3x3(x, wc, bias, mult, shift, 3, -5, -128, 127, s, top, top, out)):.0f}")
x = rng.integers(-128, 128, (224, 224, 3)).astype(np.int8)
w = rng.integers(-128, 128, (3, 3, 3, 32)).astype(np.int8)
wc = pack_qconv3x3(w, 0)
C = 32
bias = i32(rng.integers(-20000, 20000, C)); mult = i32(rng.integers(1 << 30, 1 << 31, C)); shift = i32(rng.integers(-12, -6, C))
out = np.empty((112, 112, 32), np.int8)
print(f"stem 224->112x112x32: {best(lambda: qconv3x3(x, wc, bias, mult, shift, 3, -5, -128, 127, 2, 0, 0, out)):.0f}")
a = rng.integers(-128, 128, (56 * 56, 24)).astype(np.int8)
b = rng.integers(-128, 128, (56 * 56, 24)).astype(np.int8)
o = np.empty_like(a)
print(f"add 56x56x24: {best(lambda: qadd(a, 3, 1 << 30, -1, b, -4, 1500000000, -2, 5, 1 << 30, -18, -128, 127, o), 100):.0f}")
