"""The int8 1x1 conv (kernels/qgemm.py) against a naive NumPy computation of TFLite's
formula, byte for byte: random shapes with the edge sizes, zero points at both ends of
their ranges, weights with and without a zero point, clamps hit at both ends; the
K-ranges of the sliced evaluation; the AVX2 build as a run of its own (rebuilds.py)."""
import os
import platform

import numpy as np
import pytest

from numba import njit

from mnv2engine.kernels.qgemm import QuantizedGemmError, pack_qweights, qpointwise, qpointwise_acc
from mnv2engine.kernels.qsimd import LANES, bstore, iload, vbounds, vrequant, vrequant_with, vscales
from mnv2engine.kernels.target import current

import rebuilds
from tflite_int import multiply_by_quantized_multiplier, quantize_multiplier, wrap32


def raw_sums(x, w, x_zero, w_zero):
    """sum_k (x - x_zero)(w - w_zero) in int64 (exact, no wrap)."""
    return (x.astype(np.int64) - x_zero) @ (w.astype(np.int64) - w_zero)


def reference(x, w, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi):
    acc = wrap32(raw_sums(x, w, x_zero, w_zero) + bias)
    return np.clip(multiply_by_quantized_multiplier(acc, mult, shift) + y_zero, lo, hi).astype(np.int8)


def int8s(rng, *shape):
    """Random int8 with both ends of the range well represented."""
    a = rng.integers(-128, 128, shape)
    ends = rng.random(shape)
    a[ends < 0.05], a[ends > 0.95] = -128, 127
    return a.astype(np.int8)


def multipliers(rng, C, scale):
    """Per-channel (mult, shift) of TFLite's QuantizeMultiplier for reals around `scale`,
    some channels above 1 (a left shift)."""
    reals = scale * np.exp(rng.uniform(-2, 2, C))
    reals[rng.random(C) < 0.1] *= 1000
    pairs = [quantize_multiplier(float(r)) for r in reals]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def case(rng, P, K, C, x_zero, w_zero):
    x, w = int8s(rng, P, K), int8s(rng, K, C)
    bias = rng.integers(-(1 << 20), 1 << 20, C).astype(np.int32)
    typical = np.sqrt(K) * 150 * 150  # a sum's spread: outputs span the clamp and beyond
    mult, shift = multipliers(rng, C, 100.0 / typical)
    return x, w, bias, mult, shift


SHAPES = [(P, K, C) for P in (1, 5, 13) for K in (3, 8, 17, 96) for C in (1, 7, 16, 24)] + [
    (13, 96, 1001), (1, 1280, 1001), (50, 144, 24), (49, 320, 1280), (37, 24, 144), (20, 16, 96), (6, 960, 160)]
ZEROS = [(0, 0), (-128, 0), (127, 0), (-128, -128), (127, 127), (-5, 37), (100, -90)]


@pytest.mark.parametrize("P,K,C", SHAPES)
def test_qpointwise_is_tflites_formula(P, K, C):
    rng = np.random.default_rng(P * 10007 + K * 101 + C)
    for x_zero, w_zero in ZEROS:
        x, w, bias, mult, shift = case(rng, P, K, C, x_zero, w_zero)
        y_zero = int(rng.integers(-128, 128))
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
        for lo, hi in ((-128, 127), (lo, hi)):
            packed, colsum = pack_qweights(w, w_zero)
            out = np.full((P, C), 99, np.int8)
            qpointwise(x, packed, colsum, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi, out)
            expected = reference(x, w, bias, mult, shift, x_zero, w_zero, y_zero, lo, hi)
            np.testing.assert_array_equal(out, expected, err_msg=f"zero points x {x_zero}, w {w_zero}, "
                                                                 f"y {y_zero}, clamp {lo}..{hi}")


def test_the_clamp_is_hit_at_both_ends_and_between():
    """The cases above saturate: a check that they do, on one shape, so that the clamp and
    the zero point are tested and not only the interior."""
    rng = np.random.default_rng(7)
    x, w, bias, mult, shift = case(rng, 13, 96, 1001, -128, 0)
    expected = reference(x, w, bias, mult, shift, -128, 0, -3, -100, 90)
    assert (expected == -100).mean() > 0.05 and (expected == 90).mean() > 0.05
    assert ((expected > -100) & (expected < 90)).mean() > 0.2


def test_wrapping_sums_and_extreme_multipliers():
    """Sums whose int32 wraps (a bias near INT32_MAX), the largest shifts either way."""
    rng = np.random.default_rng(3)
    P, K, C = 7, 40, 33
    x, w = int8s(rng, P, K), int8s(rng, K, C)
    bias = np.full(C, (1 << 31) - 1000, np.int32)
    bias[::2] = -(1 << 31) + 7
    mult = rng.integers(1 << 30, (1 << 31) - 1, C).astype(np.int32)
    shift = rng.choice(np.array([-31, -20, -1, 0, 1, 12, 31]), C).astype(np.int32)
    for x_zero, w_zero in ZEROS:
        packed, colsum = pack_qweights(w, w_zero)
        out = np.empty((P, C), np.int8)
        qpointwise(x, packed, colsum, bias, mult, shift, x_zero, w_zero, 5, -128, 127, out)
        np.testing.assert_array_equal(out, reference(x, w, bias, mult, shift, x_zero, w_zero, 5, -128, 127))


@njit  # not cached: the cache would not see a change to qsimd's code generation
def _vector_requant(acc, mult, shift, zero, lo, hi, out, out_with):
    """qsimd's requantization of 16 lanes at a time, both forms, into out and out_with."""
    for c in range(0, acc.shape[0], LANES):
        a, m, s = iload(acc, (c,), LANES), iload(mult, (c,), LANES), iload(shift, (c,), LANES)
        bstore(out, (c,), LANES, vrequant(a, m, s, zero, lo, hi))
        bstore(out_with, (c,), LANES, vrequant_with(a, vscales(m, s), vbounds(zero, lo, hi)))


def test_vector_requantization_at_the_edges():
    """The vector requantization on its own against tflite_int: INT32_MIN squared (the
    saturated product), INT32_MAX, every shift in -31..31, sums on exact halves (ties of
    the rounding shift, both signs), with the zero point and clamps at their ends."""
    rng = np.random.default_rng(11)
    edges = np.array([-(1 << 31), (1 << 31) - 1, -(1 << 31) + 1, 0, 1, -1, 1 << 30, -(1 << 30)], np.int64)
    shifts = np.arange(-31, 32)
    accs, mults, sh = [], [], []
    for s in shifts:
        for a in edges:
            for m in edges:
                accs.append(a), mults.append(m), sh.append(s)
    n = 1 << 14  # random sums, some on exact halves after the high multiply (mult 2^30 halves)
    r = rng.integers(-31, 32, n)
    accs += list(np.where(rng.random(n) < 0.5, rng.integers(-(1 << 31), 1 << 31, n),
                          (2 * rng.integers(-1000, 1000, n) + 1) << np.maximum(-r - 1, 0)))
    mults += list(np.where(rng.random(n) < 0.5, 1 << 30, rng.integers(-(1 << 31), 1 << 31, n)))
    sh += list(r)
    pad = -len(accs) % LANES
    acc = np.array(accs + [0] * pad, np.int64).astype(np.int32)
    mult = np.array(mults + [0] * pad, np.int64).astype(np.int32)
    shift = np.array(sh + [0] * pad, np.int32)
    exact = multiply_by_quantized_multiplier(acc, mult, shift)
    for zero, lo, hi in ((0, -128, 127), (-128, -128, 127), (127, -128, 127), (5, -100, 90), (-3, 20, 21)):
        out, out_with = np.empty(acc.shape, np.int8), np.empty(acc.shape, np.int8)
        _vector_requant(acc, mult, shift, zero, lo, hi, out, out_with)
        expected = np.clip(exact + zero, lo, hi).astype(np.int8)
        np.testing.assert_array_equal(out, expected, err_msg=f"vrequant, zero {zero}, clamp {lo}..{hi}")
        np.testing.assert_array_equal(out_with, expected, err_msg=f"vrequant_with, zero {zero}, clamp {lo}..{hi}")


@pytest.mark.parametrize("K,C,cuts", [(96, 24, (0, 32, 48, 96)), (144, 1001, (0, 16, 64, 144)),
                                      (53, 7, (0, 16, 53)), (3, 16, (0, 3)), (960, 160, (0, 240, 480, 720, 960))])
def test_k_ranges_add_up_to_the_whole_sum(K, C, cuts):
    """qpointwise_acc over the K-ranges of the packing's views (k0, k1 multiples of 16 or
    K) adds the raw sums of each range into one int32 buffer."""
    rng = np.random.default_rng(K + C)
    for P in (1, 5, 13):
        for x_zero, w_zero in ZEROS:
            x, w = int8s(rng, P, K), int8s(rng, K, C)
            packed, colsum = pack_qweights(w, w_zero)
            start = rng.integers(-(1 << 31), 1 << 31, (P, C)).astype(np.int32)
            acc = start.copy()
            for k0, k1 in zip(cuts, cuts[1:]):
                xs = np.ascontiguousarray(x[:, k0:k1])
                qpointwise_acc(xs, packed[:, k0 // 4:-(-k1 // 4)], colsum[k0 // 16:-(-k1 // 16)],
                               x_zero, w_zero, acc)
            np.testing.assert_array_equal(acc, wrap32(raw_sums(x, w, x_zero, w_zero) + start))


def test_bad_weights_and_buffers_are_refused_by_name():
    w = np.zeros((8, 4), np.int8)
    with pytest.raises(QuantizedGemmError, match="int8"):
        pack_qweights(w.astype(np.uint8), 0)
    with pytest.raises(QuantizedGemmError, match="zero point"):
        pack_qweights(w, 200)
    packed, colsum = pack_qweights(w, 0)
    x, v = np.zeros((3, 9), np.int8), np.zeros(4, np.int32)
    with pytest.raises(QuantizedGemmError, match="packed"):
        qpointwise(x, packed, colsum, v, v, v, 0, 0, 0, -128, 127, np.empty((3, 4), np.int8))
    x8 = np.ascontiguousarray(x[:, :8])  # the layout every other call has: no compile of its own
    with pytest.raises(QuantizedGemmError, match="channel"):
        qpointwise(x8, packed, colsum, v[:3], v, v, 0, 0, 0, -128, 127, np.empty((3, 4), np.int8))
    with pytest.raises(QuantizedGemmError, match="negative"):
        qpointwise(x8, packed, colsum, v, np.array([1, -1, 1, 1], np.int32), v, 0, 0, 0, -128, 127,
                   np.empty((3, 4), np.int8))


X86 = platform.machine() in ("x86_64", "AMD64")
HASWELL_RUN = X86 and os.environ.get("NUMBA_CPU_NAME") is None and (current().isa, current().int_dot) != ("avx2", "none")
if HASWELL_RUN:  # the portable path: .ci/arm (aarch64)
    rebuilds.declare("qgemm haswell", {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": None}, ["test_qgemm.py"])


@pytest.mark.slow
@pytest.mark.rebuild("qgemm haswell")
def test_the_same_in_other_builds():
    """These tests compiled for AVX2 without VNNI: the path the native (VNNI) run does not
    take."""
    if not HASWELL_RUN:
        pytest.skip("this run is for a chosen target, or its native build is AVX2 without VNNI, or not x86-64")
    rebuilds.check("qgemm haswell", "tests compiled for haswell")


GENERIC_RUN = X86 and os.environ.get("NUMBA_CPU_NAME") is None
if GENERIC_RUN:
    rebuilds.declare("qgemm generic", {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": None}, ["test_qgemm.py"],
                     "-k", "test_qpointwise_is_tflites_formula")  # qpointwise alone: one compile


@pytest.mark.slow
@pytest.mark.rebuild("qgemm generic")
def test_the_same_on_baseline_x86():
    """The 1x1 conv against TFLite's formula, compiled for baseline x86-64: the pairs'
    pmaddwd on 128-bit registers."""
    if not GENERIC_RUN:
        pytest.skip("this run is for a chosen target, or not x86-64")
    rebuilds.check("qgemm generic", "tests compiled for generic")


def test_haswell_and_generic_have_no_integer_dot_product():
    """target.py's fact as the kernels read it: NUMBA_CPU_NAME=haswell (or generic) builds
    the code without VNNI on any x86-64 machine."""
    if os.environ.get("NUMBA_CPU_NAME") not in ("haswell", "generic"):
        pytest.skip("a run for haswell or generic")
    assert current().int_dot == "none"
