"""Keep Numba's on-disk cache honest across edits of the kernel sources.

Numba checks a cached function against the timestamp of its own source file only. A
kernel in block.py that calls (and inlines) one from depthwise.py keeps running the old
code after depthwise.py changes, until block.py changes too. So: one digest of all the
kernel sources, stored beside the cache (wherever Numba keeps it, NUMBA_CACHE_DIR too);
when it differs, every cached kernel is dropped.

And serialize the saves of processes that compile at once (Ray workers, the test suite's
other builds): Numba numbers a function's cached overloads by reading its index, so two
processes saving different overloads together can give them the same data file, and the
index then points one signature at the other's code (numba#4807: a crash, or a wrong
answer). Saves into this folder take a lock file first (POSIX; elsewhere, unguarded).
"""
import contextlib
import hashlib
import os
from pathlib import Path

from numba import njit
from numba.core import caching

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

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
LOCK = "saving.lock"  # in CACHE: held while a process saves a kernel or drops the cache


@contextlib.contextmanager
def locked(folder: Path):
    """Hold `folder`/LOCK, exclusively among processes, for the block; no lock without
    flock, or where the file cannot be opened (a folder Numba cannot save into either)."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o666) if fcntl else -1
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def guard_saves() -> None:
    """Numba's saves into CACHE hold its lock (module docstring); other folders' as they were."""
    save = caching.IndexDataCacheFile.save
    if getattr(save, "guarded", False):
        return

    def guarded_save(self, key, data):
        if Path(getattr(self, "_cache_path", "")) != CACHE:
            return save(self, key, data)
        with locked(CACHE):
            return save(self, key, data)  # reads the index again, under the lock
    guarded_save.guarded = True
    caching.IndexDataCacheFile.save = guarded_save


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
        CACHE.mkdir(parents=True, exist_ok=True)
        with locked(CACHE):
            for f in CACHE.glob("*.nb[ic]"):
                f.unlink(missing_ok=True)
            STAMP.write_text(digest)
    except OSError:
        pass  # a read-only install: Numba caches elsewhere (NUMBA_CACHE_DIR), or not at all
