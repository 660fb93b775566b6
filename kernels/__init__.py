"""Numba microkernels on float32 NHWC arrays (installed as `mnv2engine.kernels`).

Pure functions: they know nothing of files or images, and never allocate activation
memory: every output and scratch buffer is passed in by the caller. The exceptions to
"no graphs" are network.py, which walks a plan the engine has already turned into a table
of offsets, so that threads sharing an image run the whole network in one nogil call, and
pipeline.py, which runs the table's first blocks row by row across blocks.

Every conv ends in the same epilogue, `clamp(acc + bias, lo, hi)`: (0, 6) is ReLU6 and
(-inf, inf) is linear. The entry points release the GIL (nogil), so calls from several
Python threads run in parallel; threads that share one image meet at the spin barrier of
sync.py.

The arithmetic is written with explicit 16-lane float32 vectors (simd.py); every 1x1 conv
is one register-blocked GEMM (gemm.py), whose weights are packed once into panels as
wide as its tile (pack_panels, pack_expansion); the stem's with taps in lanes (pack_stem).
The tiles are sized for the registers of the CPU Numba compiles for (target.py).
"""
if __name__ == "kernels":
    # Imported as a top-level `kernels` because the repo root is on sys.path (a REPL, a
    # notebook, `python -m pytest`): that name belongs to the PyPI package transformers
    # uses. Load that one in this module's place, or fail as if this folder were absent.
    from ._step_aside import replace_with_installed

    replace_with_installed(__name__, __file__)
else:
    from ._cache import drop_stale_cache, guard_saves

    drop_stale_cache()  # before any kernel is loaded from the cache
    guard_saves()

    from .conv import conv3x3, depthwise3x3, pointwise  # noqa: E402
    from .pool import global_avg_pool, pointwise_avg_pool  # noqa: E402
    from .block import pack_expansion, pack_slices  # noqa: E402
    from .gemm import pack_panels  # noqa: E402

    __all__ = ["pointwise", "depthwise3x3", "conv3x3", "global_avg_pool", "pointwise_avg_pool",
               "pack_slices", "pack_expansion", "pack_panels"]
