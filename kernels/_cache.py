"""Keep Numba's on-disk cache honest across edits of the kernel sources.

Numba checks a cached function against the timestamp of its own source file only. A
kernel in block.py that calls (and inlines) one from depthwise.py keeps running the old
code after depthwise.py changes, until block.py changes too. So: one digest of all the
kernel sources, stored beside the cache (wherever Numba keeps it, NUMBA_CACHE_DIR too);
when it differs, every cached kernel is dropped.
"""
import hashlib
import os
from pathlib import Path

from numba import njit

from .target import TILES_OVERRIDE

HERE = Path(__file__).resolve().parent


@njit(cache=True)
def _probe():  # never compiled: its cache's folder is the kernels'
    pass


def _numba_cache_folder() -> Path:
    """Where Numba caches this folder's kernels, as its own locators choose it:
    NUMBA_CACHE_DIR's subfolder, else __pycache__ here, else the user's cache folder."""
    try:
        return Path(_probe._cache._cache_path)
    except AttributeError:  # a Numba whose cache is laid out otherwise
        return HERE / "__pycache__"


CACHE = _numba_cache_folder()
STAMP = CACHE / "kernel-sources.sha256"


def drop_stale_cache() -> None:
    sources = b"".join(p.read_bytes() for p in sorted(HERE.glob("*.py")))
    # The tile table is frozen into the kernels, and Numba's cache keys on the CPU only:
    # a table chosen by hand (target.py, for tests) must not meet kernels built without.
    sources += os.environ.get(TILES_OVERRIDE, "").encode()
    digest = hashlib.sha256(sources).hexdigest()
    try:
        if STAMP.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for f in CACHE.glob("*.nb[ic]"):
            f.unlink(missing_ok=True)
        CACHE.mkdir(exist_ok=True)
        STAMP.write_text(digest)
    except OSError:
        pass  # a read-only install: Numba caches elsewhere (NUMBA_CACHE_DIR), or not at all
