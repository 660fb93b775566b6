"""Keep Numba's on-disk cache honest across edits of the kernel sources.

Numba checks a cached function against the timestamp of its own source file only. A
kernel in block.py that calls (and inlines) one from depthwise.py keeps running the old
code after depthwise.py changes, until block.py changes too. So: one digest of all the
kernel sources, stored beside the cache; when it differs, every cached kernel is dropped.
"""
import hashlib
import os
from pathlib import Path

from .target import TILES_OVERRIDE

HERE = Path(__file__).resolve().parent
CACHE = HERE / "__pycache__"  # where Numba puts cache files when the package is writable
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
