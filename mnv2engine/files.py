"""Filesystem errors as EngineErrors that name the user's path, and leave nothing behind.

Writes go to a temporary file beside the destination, renamed into place at the end
(`temporary`): a failed, full or interrupted write never leaves a half-written or
clobbered destination, nor the temporary file. The errors the OS gives (a missing
folder, a read-only one, a directory in the way, permission denied, a full disk) then
name the temporary file, which the user never chose; `writing` names theirs.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import EngineError


def reason(e: OSError) -> str:
    """What went wrong, without the path (the caller names the user's): 'No space left
    on device', 'Permission denied', 'Read-only file system'."""
    return e.strerror or str(e)


def check_destination(dst: Path) -> None:
    """Refuse a destination that is a directory, or whose folder does not exist."""
    if dst.is_dir():
        raise EngineError(f"{dst}: is a directory; give the path of a file, e.g. {dst / 'mnv2.h5'}")
    if not dst.parent.is_dir():
        what = "is not a folder" if dst.parent.exists() else "does not exist"
        raise EngineError(f"{dst}: cannot write there, the folder {dst.parent} {what}")


@contextlib.contextmanager
def writing(dst: Path):
    """OSErrors inside, as EngineErrors naming `dst`."""
    try:
        yield
    except OSError as e:
        raise EngineError(f"{dst}: cannot write ({reason(e)}); it was left as it was") from None


@contextlib.contextmanager
def temporary(dst: Path):
    """The path of a new empty file beside `dst` (so that renaming it onto `dst` is
    atomic), removed on leaving unless it was renamed."""
    check_destination(dst)
    with writing(dst):
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):  # gone (renamed), or nothing more can be done
            os.unlink(tmp)
