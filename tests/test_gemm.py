"""The register-blocked GEMMs (gemm.py, pairs.py): panels, tile edges, and that they write
nothing but their output."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnv2engine.kernels import _cache, pack_panels
from mnv2engine.kernels.gemm import BLOCK_FLOATS, PANEL, gemm
from mnv2engine.kernels.pairs import pack_pairs, pointwise_pairs

import naive
from conftest import close


def test_pack_panels_lays_out_column_blocks():
    """Panels of the target's width (64 channels on AVX-512, 16 elsewhere)."""
    C = PANEL + 6
    w = np.arange(5 * C, dtype=np.float32).reshape(5, C)
    p = pack_panels(w)
    assert p.shape == (2, 5, PANEL)
    np.testing.assert_array_equal(p[0], w[:, :PANEL])
    np.testing.assert_array_equal(p[1, :, :6], w[:, PANEL:])
    assert not p[1, :, 6:].any()


def spread_bias(x, w, lo, hi):
    """A bias per channel that puts the first pixel's outputs below `lo`, inside (lo, hi)
    and above `hi` in turn (channel 0, 1, 2, 0, ...), so every case clamps at both ends
    and passes values through; the other pixels stay random around them."""
    targets = np.resize([lo - 3.0, (lo + hi) / 2, hi + 3.0], w.shape[1])
    return (targets - x[0].astype(np.float64) @ w).astype(np.float32)


def assert_clamps_and_passes(reference, lo, hi):
    """The case proves the clamp only if the reference output (not the kernel's) holds
    values at `lo`, at `hi` and strictly between."""
    assert (reference == lo).any() and (reference == hi).any(), "the case never clamps at one end"
    assert ((reference > lo) & (reference < hi)).any(), "the case clamps every output"


# Widths that end in each tile (4 or 6 pixel wide, mid, narrow, thin) and pixel counts
# below and above the short-row threshold, none a multiple of the tile height; and more
# pixels than one block of x rows holds (the one-vector tiles of AVX2 and 128-bit SIMD).
@pytest.mark.parametrize("P", [1, 7, 23, 31, BLOCK_FLOATS // 19 + 5])
@pytest.mark.parametrize("C", [5, 16, 27, 40, 64, 100, 131])
def test_gemm_writes_exactly_its_output(P, C):
    """The output is a window of a larger array filled with a sentinel: every value in the
    window matches NumPy, and nothing around it (lanes or pixels past the edges) changes."""
    rng = np.random.default_rng(P * 1000 + C)
    K = 19
    x = rng.standard_normal((P, K)).astype(np.float32)
    w = rng.standard_normal((K, C)).astype(np.float32)
    b = spread_bias(x, w, 0.0, 6.0)
    big = np.full((P + 2, C + 40), 7.5, np.float32)
    out = big[1:P + 1, 3:C + 3]
    gemm(x, pack_panels(w), b, False, 0.0, 6.0, out)
    reference = naive.pointwise(x, w, b, 0.0, 6.0)
    assert_clamps_and_passes(reference, 0.0, 6.0)
    close(out, reference, 1e-5)
    outside = np.ones(big.shape, bool)
    outside[1:P + 1, 3:C + 3] = False
    assert (big[outside] == 7.5).all()
    prev = out.copy()
    gemm(x, pack_panels(w), b, True, -np.inf, np.inf, out)  # accumulate onto the output
    close(out, prev + x.astype(np.float64) @ w, 1e-5)
    assert (big[outside] == 7.5).all()


# Widths of 1, 2 and 3 vectors of 8 channels and their mixes (24 and 36 are t = 4's
# slices), input depths odd and even (the last pair of an odd depth), 1 pixel to several tiles.
@pytest.mark.parametrize("P", [1, 7, 13, 40])
@pytest.mark.parametrize("K", [2, 5, 16, 24])
@pytest.mark.parametrize("C", [3, 8, 12, 24, 36, 40])
def test_pointwise_pairs_writes_exactly_its_output(P, K, C):
    """The same check for the 1x1 conv by pairs of inputs (pairs.py)."""
    rng = np.random.default_rng(P * 1000 + K * 50 + C)
    x = rng.standard_normal((P, K)).astype(np.float32)
    w = rng.standard_normal((K, C)).astype(np.float32)
    b = spread_bias(x, w, 0.0, 6.0)
    big = np.full((P + 2, C + 40), 7.5, np.float32)
    out = big[1:P + 1, 3:C + 3]
    pointwise_pairs(x, pack_pairs(w), b, 0.0, 6.0, out)
    reference = naive.pointwise(x, w, b, 0.0, 6.0)
    assert_clamps_and_passes(reference, 0.0, 6.0)
    close(out, reference, 1e-5)
    outside = np.ones(big.shape, bool)
    outside[1:P + 1, 3:C + 3] = False
    assert (big[outside] == 7.5).all()


def test_stale_kernel_cache_is_dropped_under_numba_cache_dir(tmp_path):
    """With NUMBA_CACHE_DIR set, the stamp sits where Numba itself wrote the kernels, and
    a stamp of other sources drops them."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    compile_one = ("import numpy as np; from mnv2engine.kernels.qdepthwise import pack_qdepthwise as f; "
                   "f(np.zeros((3, 3, 2), np.int8), 0)")
    subprocess.run([sys.executable, "-c", compile_one], env=env, check=True)
    written = [p.parent for p in tmp_path.rglob("qdepthwise.pack_qdepthwise-*.nbi")]
    assert len(written) == 1 and (written[0] / "kernel-sources.sha256").exists()
    (written[0] / "kernel-sources.sha256").write_text("the sources of another version")
    subprocess.run([sys.executable, "-c", "import mnv2engine.kernels"], env=env, check=True)
    assert not list(written[0].glob("*.nbi"))


@pytest.mark.skipif(_cache.fcntl is None, reason="no flock on this platform: saves go unguarded")
def test_a_save_into_the_kernel_cache_waits_while_another_process_holds_its_lock(tmp_path):
    """Processes that compile at once save one after another (_cache.locked, numba#4807):
    a child process's save waits while this one holds the lock file, taken here with
    flock directly."""
    import fcntl
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    script = ("import sys, numpy as np; from mnv2engine.kernels import _cache; "
              "from mnv2engine.kernels.qdepthwise import pack_qdepthwise as f; print(_cache.CACHE, flush=True); "
              "sys.stdin.readline(); f(np.zeros((3, 3, 2), np.int8), 0)")
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(child.stdout.readline().strip())
        saved = lambda: list(folder.glob("qdepthwise.pack_qdepthwise-*.nb[ic]"))  # noqa: E731
        with open(folder / _cache.LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            child.stdin.write("compile\n")
            child.stdin.flush()
            time.sleep(3)  # the compile takes a fraction of a second: its save is waiting now
            assert child.poll() is None and not saved(), "the child saved while the lock was held"
        assert child.wait(timeout=120) == 0
        assert saved()
    finally:
        child.kill()
        child.wait()


def test_stale_kernel_cache_is_dropped_when_a_source_changes(tmp_path, monkeypatch):
    src, cache = tmp_path / "src", tmp_path / "src" / "__pycache__"
    cache.mkdir(parents=True)
    (src / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(_cache, "HERE", src)
    monkeypatch.setattr(_cache, "CACHE", cache)
    monkeypatch.setattr(_cache, "STAMP", cache / "kernel-sources.sha256")
    (cache / "a.f-1.py311.nbi").write_bytes(b"old")
    _cache.drop_stale_cache()  # no stamp yet: the cache cannot be trusted
    assert not list(cache.glob("*.nbi"))
    (cache / "a.f-1.py311.nbi").write_bytes(b"new")
    _cache.drop_stale_cache()  # sources unchanged: kept
    assert list(cache.glob("*.nbi"))
    (src / "a.py").write_text("x = 2\n")
    _cache.drop_stale_cache()  # a source changed: dropped
    assert not list(cache.glob("*.nbi"))
