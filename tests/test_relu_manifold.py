"""benchmarks/relu_manifold.py: the paper's Figure 1 (ReLU on a spiral embedded in R^n)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "relu_manifold.py"
_spec = importlib.util.spec_from_file_location("relu_manifold", SCRIPT)
rm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rm)

X = rm.spiral(400)


def test_spiral_shape_and_order():
    assert X.shape == (400, 2)
    r = np.linalg.norm(X, axis=1)
    assert np.all(np.diff(r) > 0), "points run from the inner end outwards"
    assert r.min() > 0, "no point at the origin (it has no direction)"


@pytest.mark.parametrize("n", rm.NS)
def test_linear_control_is_exact_for_every_n(n):
    for k in range(5):
        rec = rm.relu_roundtrip(X, n, np.random.default_rng([n, k]), relu=False)
        assert rm.reconstruction_error(X, rec) < 1e-12
        loss = rm.information_loss(X, rm.draw(n, 0, k), relu=False)
        assert loss["pinv"] < 1e-12 and loss["non_invertible"] == 0.0


def test_relu_loses_information_and_less_when_wider():
    s = rm.sweep(X, (2, 5, 30), seeds=20, seed=0)
    pinv = {n: s[n]["pinv"].mean() for n in s}
    readout = {n: s[n]["readout"].mean() for n in s}
    lost = {n: s[n]["non_invertible"].mean() for n in s}
    assert pinv[30] < pinv[5] < pinv[2], pinv
    assert readout[30] < readout[5] < readout[2], readout
    assert lost[30] < lost[5] < lost[2], lost
    assert pinv[2] > 0.5 and lost[2] > 0.5           # n = 2: most points damaged
    assert readout[30] < 0.01 and lost[30] == 0.0     # n = 30: all there, linearly readable


def test_pinv_decoder_tends_to_half_of_x():
    """ReLU(z) = (z + |z|)/2, so T+ReLU(Tx) = x/2 + T+|Tx|/2 -> x/2: error -> 0.5, not 0."""
    T = rm.draw(2000, 0, 0)
    rec = rm.roundtrip(X, T)
    assert rm.reconstruction_error(X, rec) == pytest.approx(0.5, abs=0.02)
    assert rm.reconstruction_error(X / 2, rec) < 0.05


def test_non_invertible_identity_n2():
    # T = I: ReLU keeps the positive coordinates; a point with a negative one is lost.
    T = np.eye(2)
    x = np.array([[1.0, 2.0], [1.0, -2.0], [-1.0, 2.0], [-1.0, -2.0], [3.0, 0.5],
                  [1.0, 0.0]])    # a coordinate exactly 0: ReLU(0) = ReLU(-c), so lost too
    assert rm.non_invertible(x, T).tolist() == [False, True, True, True, False, True]
    assert rm.non_invertible_fraction(x, T) == pytest.approx(4 / 6)


def test_non_invertible_counts_rank_not_active_rows():
    # Rows 0 and 1 are parallel: two active coordinates of rank 1 do not determine x.
    T = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    x = np.array([[1.0, -1.0],    # active rows 0, 1: rank 1 -> lost
                  [1.0, 1.0],     # all active: rank 2
                  [-1.0, 1.0]])   # active row 2 only -> lost
    assert rm.non_invertible(x, T).tolist() == [True, False, True]
    # and indeed: another input gives the same ReLU output as the first point
    relu = lambda p: np.maximum(T @ p, 0)
    np.testing.assert_array_equal(relu(x[0]), relu(np.array([1.0, -5.0])))


def test_active_set_decode_exact_where_invertible_nan_elsewhere():
    for n in (2, 3, 5):
        T = rm.draw(n, 0, 1)
        lost = rm.non_invertible(X, T)
        dec = rm.active_set_decode(X, T)
        assert 0 < lost.sum() < len(X), f"n = {n}: want both kinds of point"
        np.testing.assert_allclose(dec[~lost], X[~lost], atol=1e-12)
        assert np.isnan(dec[lost]).all()


@pytest.mark.parametrize("n", (2, 3, 5))
def test_non_invertible_fraction_matches_theory(n):
    """For Gaussian T each (Tx)_i > 0 is an independent fair coin: E = (n + 1) / 2^n."""
    f = np.array([rm.non_invertible_fraction(X, rm.draw(n, 7, k)) for k in range(400)])
    assert f.mean() == pytest.approx(rm.expected_non_invertible(n), abs=0.03)


def test_table_and_import_without_matplotlib():
    code = ("import sys, runpy; sys.modules['matplotlib'] = None; "
            f"sys.argv = ['x', '--no-plot', '--points', '200', '--seeds', '3']; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith(f"| {n} |") for line in lines for n in rm.NS) == len(rm.NS)
    assert any(line.startswith("| control: no ReLU") for line in lines)
