"""kernels/requant.py against the NumPy reference of TFLite's fixed-point arithmetic
(tests/tflite_int.py, written from TFLite's reference kernels), at the edges and at random."""
import numpy as np
import pytest
from numba import njit

from mnv2engine.kernels.requant import INT32_MAX, INT32_MIN, to_8bit
from mnv2engine.kernels.requant import requantize as kernel_requantize

import tflite_int as ref


@njit(cache=True)
def _requantize_all(acc, mult, shift):
    out = np.empty(acc.size, np.int64)
    for i in range(acc.size):
        out[i] = kernel_requantize(acc[i], mult[i], shift[i])
    return out


@njit(cache=True)
def _to_8bit_all(acc, mult, shift, zero, lo, hi):
    out = np.empty(acc.size, np.int64)
    for i in range(acc.size):
        out[i] = to_8bit(acc[i], mult[i], shift[i], zero, lo, hi)
    return out


def _cases(seed, n=20000):
    rng = np.random.default_rng(seed)
    acc = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    acc[:8] = [INT32_MIN, INT32_MAX, 0, -1, 1, -(1 << 20), (1 << 20) - 1, -(1 << 24)]
    mult = rng.integers(1 << 30, INT32_MAX, n, endpoint=True)
    mult[:4] = [INT32_MIN, 1 << 30, INT32_MAX, 1 << 30]
    shift = rng.integers(-31, 1, n)
    shift[:6] = [0, -31, -1, 0, -31, -12]
    # small accumulators, where the rounding of ties shows
    acc[n // 2:] = rng.integers(-4096, 4096, n - n // 2)
    return acc, mult, shift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantize_is_tflites_multiply_by_quantized_multiplier(seed):
    acc, mult, shift = _cases(seed)
    want = ref.multiply_by_quantized_multiplier(acc, mult, shift)
    assert np.array_equal(_requantize_all(acc, mult, shift), want)


def test_a_left_shift_wraps_in_int32_as_tflite_does():
    acc = np.array([1 << 29, -(1 << 29), 3, 12345], np.int64)
    mult, shift = np.full(4, 1 << 30), np.array([2, 2, 30, 1])
    assert np.array_equal(_requantize_all(acc, mult, shift), ref.multiply_by_quantized_multiplier(acc, mult, shift))


@pytest.mark.parametrize("zero,lo,hi", [(0, -128, 127), (-128, -128, -1), (127, 0, 127), (5, -3, 9)])
def test_the_output_adds_the_zero_point_and_clamps(zero, lo, hi):
    acc, mult, shift = _cases(3, 5000)
    want = np.clip(ref.multiply_by_quantized_multiplier(acc, mult, shift) + zero, lo, hi)
    got = _to_8bit_all(acc, mult, shift, zero, lo, hi)
    assert np.array_equal(got, want)
    assert (got == lo).any() and (got == hi).any(), "the cases saturate at both ends"
