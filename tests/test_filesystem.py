"""Every filesystem error is an EngineError that names the user's path, and leaves
nothing behind: convert, fetch-weights (its download and the cache) and predict, on a
missing folder, a directory in the way, a read-only folder, permission denied and a
full disk.

A read-only folder and a full disk are real tmpfs mounts (CI runs as root); where the
machine does not allow mounting, those tests are skipped with the reason. As root,
permissions do not apply, so the permission-denied tests run only as another user.
"""
import hashlib
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from mnv2engine import EngineError, convert
from mnv2engine.cli import main
from mnv2engine.fetch import fetch_weights
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset

ROOT_ONLY_BYPASSES = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root bypasses file permissions (the read-only tmpfs tests cover a refused write)")


@pytest.fixture
def src(tmp_path):
    """A small weight file to convert (any readable format will do)."""
    path = tmp_path / "src.h5"
    write_mnv2(random_weightset(alpha=0.35, size=32, classes=3), path)
    return path


def tmpfs(folder, options):
    """Mount a tmpfs at `folder` (created); skip the test where that is not allowed."""
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); CI runs as root, where it can")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); CI runs as root, where it can")
    return folder


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs holding one small file, old.h5: too small for any weight file."""
    folder = tmpfs(tmp_path / "full", "size=64k")
    (folder / "old.h5").write_bytes(b"the user's old file")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only(tmp_path):
    folder = tmpfs(tmp_path / "ro", "ro,size=64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_convert_into_a_missing_folder(src, tmp_path):
    dst = tmp_path / "no" / "such" / "mnv2.h5"
    with pytest.raises(EngineError, match=f"{dst}: .*folder {dst.parent} does not exist"):
        convert(src, dst)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("force", [False, True])
def test_convert_onto_a_directory(src, tmp_path, force):
    dst = tmp_path / "models"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(EngineError, match=f"{dst}: is a directory"):
        convert(src, dst, force=force)
    assert listing(dst) == ["keep.txt"] and listing(tmp_path) == ["models", "src.h5"]


def test_convert_onto_a_full_disk_keeps_the_old_file(src, full_disk):
    dst = full_disk / "old.h5"
    with pytest.raises(EngineError, match=f"{dst}: cannot write \\(No space left on device\\)"):
        convert(src, dst, force=True)
    assert dst.read_bytes() == b"the user's old file" and listing(full_disk) == ["old.h5"]
    with pytest.raises(EngineError, match="No space left"):
        convert(src, full_disk / "new.h5")
    assert listing(full_disk) == ["old.h5"]


def test_convert_into_a_read_only_folder(src, read_only):
    dst = read_only / "mnv2.h5"
    with pytest.raises(EngineError, match=f"{dst}: cannot write \\(Read-only file system\\)"):
        convert(src, dst)
    assert listing(read_only) == []


@ROOT_ONLY_BYPASSES
def test_convert_into_a_folder_without_write_permission(src, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(EngineError, match=f"{folder / 'mnv2.h5'}: cannot write \\(Permission denied\\)"):
            convert(src, folder / "mnv2.h5")
        assert listing(folder) == []
    finally:
        folder.chmod(0o700)


@ROOT_ONLY_BYPASSES
def test_unreadable_source_and_image(src, tmp_path):
    src.chmod(0)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    image.chmod(0)
    try:
        with pytest.raises(EngineError, match=f"{src}: cannot read \\(Permission denied\\)"):
            convert(src, tmp_path / "dst.h5")
        from mnv2engine import Engine
        with pytest.raises(EngineError, match=f"{image}: cannot read \\(Permission denied\\)"):
            Engine.random(alpha=0.35, size=32, classes=3).predict(image)
    finally:
        src.chmod(0o600)
        image.chmod(0o600)


def test_predict_names_an_image_the_filesystem_refuses(tmp_path, capsys, monkeypatch):
    """Whoever runs the tests: the OS's refusal (EACCES) of one image, through the CLI."""
    weights = tmp_path / "m.h5"
    write_mnv2(random_weightset(alpha=0.35, size=32, classes=3), weights)
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    for p in (good, bad):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    real_open = Image.open

    def open_(fp, *args, **kw):
        if str(fp) == str(bad):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kw)
    monkeypatch.setattr(Image, "open", open_)
    assert main(["predict", str(good), str(bad), "--weights", str(weights), "--top", "1"]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: cannot read (Permission denied)" in captured.err and "Traceback" not in captured.err
    assert str(good) in captured.out


def _source_url(src):
    return src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest()


def test_fetch_into_a_full_disk(src, full_disk):
    url, digest = _source_url(src)
    dst = full_disk / "cache" / "mnv2.h5"
    with pytest.raises(EngineError, match=f"{dst}: cannot write \\(No space left on device\\)"):
        fetch_weights(dst, url=url, sha256=digest)
    assert listing(full_disk / "cache") == []  # the folder it made, but no download left


def test_fetch_into_a_read_only_cache(src, read_only, capsys):
    url, digest = _source_url(src)
    for dst in (read_only / "mnv2.h5", read_only / "cache" / "mnv2.h5"):
        with pytest.raises(EngineError, match=f"{dst}: cannot write \\(Read-only file system\\)"):
            fetch_weights(dst, url=url, sha256=digest)
    assert listing(read_only) == []
    assert main(["fetch-weights", "--url", url, "--sha256", digest, "--dest", str(read_only / "m.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnv2: error: {read_only / 'm.h5'}: cannot write") and "Traceback" not in err


def test_fetch_onto_a_directory_or_into_a_missing_folder(src, tmp_path):
    url, digest = _source_url(src)
    (tmp_path / "cache").mkdir()
    with pytest.raises(EngineError, match=f"{tmp_path / 'cache'}: is a directory"):
        fetch_weights(tmp_path / "cache", url=url, sha256=digest, force=True)
    assert listing(tmp_path / "cache") == []
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EngineError, match=f"{tmp_path / 'file' / 'mnv2.h5'}: cannot write"):
        fetch_weights(tmp_path / "file" / "mnv2.h5", url=url, sha256=digest)
    dst = tmp_path / "new" / "mnv2.h5"  # a missing cache folder is made, as on first use
    fetch_weights(dst, url=url, sha256=digest)
    assert listing(dst.parent) == ["mnv2.h5"]


def test_cli_convert_errors_name_the_users_path(src, tmp_path, capsys):
    dst = tmp_path / "missing" / "x.h5"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnv2: error: {dst}:") and ".tmp" not in err and "Traceback" not in err
