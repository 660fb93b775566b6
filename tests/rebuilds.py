"""The suite's runs of other builds: test files run again by pytest in a subprocess, the
kernels compiled for another target (NUMBA_CPU_NAME=haswell or generic, a tile table).

Each run takes a minute or two, nearly all of it Numba compiling on one core. So the runs
start as soon as the tests are collected (conftest.py), one after another on a background
thread, and each test only waits for its run's result: the runs' compiles overlap the
rest of the suite.

A test module declares its runs at import (`declare`), and its test marks itself
`@pytest.mark.rebuild(name)` and asserts on its run's result (`check`).

Under pytest-xdist every worker collects every test, and the test that waits for a run
may land on any worker. So the runs' results are files in one folder per session
(FOLDER, made by the main process: `open_session`): the first worker to claim a run (an
exclusive create of its claim file) starts it, and whichever worker needs it waits for
its result file. A process's session ends (`stop`) by waiting for the runs it started,
which another worker may still need; after a Ctrl-C or a -x stop, by ending them: none
outlives the session.

tracemalloc counts every thread's allocations: the background thread allocates (starting
a run, keeping its result) only while it holds QUIET, which a test holds while it measures
(conftest.traced).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
TIMEOUT = 1500  # seconds per run
FOLDER = "MNV2_REBUILDS"  # the environment variable naming the session's folder of results

RUNS: dict[str, tuple[dict, list[str]]] = {}  # name: (variables to set or remove (None), pytest's arguments)
QUIET = threading.Lock()  # held by a test measuring memory (module docstring)
_lock = threading.Lock()
_mine: dict[str, subprocess.Popen | None] = {}  # the runs this process claimed: their processes once started
_threads: list[threading.Thread] = []
_stopping = False


def declare(name: str, env: dict[str, str | None], files: list[str], *options: str) -> None:
    """A run of `files` (in tests/) with `env` changed, under `name`."""
    RUNS[name] = (env, [str(HERE / f) for f in files] + list(options))


def open_session() -> str | None:
    """In the main process (not an xdist worker, which inherits it): the session's folder
    of results, made now; its path, to remove at the end (close_session)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return None
    os.environ[FOLDER] = tempfile.mkdtemp(prefix="mnv2-rebuilds-")
    return os.environ[FOLDER]


def close_session(folder: str | None) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def start(names: list[str]) -> None:
    """Claim the declared runs among `names` no process has claimed yet, and run them one
    after another in the background."""
    todo = []
    with _lock:
        for name in dict.fromkeys(names):
            if name in RUNS and name not in _mine and _claim(name):
                _mine[name] = None
                todo.append(name)
    if todo:
        thread = threading.Thread(target=lambda: [_execute(n) for n in todo], daemon=True)
        _threads.append(thread)
        thread.start()


def check(name: str, what: str) -> None:
    """Fail the calling test unless the run passed, with its output's end."""
    returncode, stdout, stderr = result(name)
    assert returncode == 0, f"{what} failed:\n{stdout[-4000:]}\n{stderr[-2000:]}"


def result(name: str) -> tuple[int, str, str]:
    """(return code, stdout, stderr) of the run, once it has finished (started now if no
    process has); a failure to run it at all is raised."""
    if name not in RUNS:
        raise KeyError(f"no run {name!r} was declared")
    start([name])
    done, deadline = _path(name, "rc"), time.monotonic() + TIMEOUT + 60
    while not done.exists():
        claimant = int(_path(name, "claim").read_text() or 0)
        if time.monotonic() > deadline or not _alive(claimant):
            raise RuntimeError(f"the run {name!r} gave no result (its process {claimant} ended, or "
                               f"{TIMEOUT + 60} s passed)")
        time.sleep(0.2)
    text = done.read_text()
    if not text.lstrip("-").isdigit():
        raise RuntimeError(f"the run {name!r} could not run: {text}")
    return int(text), *(_path(name, part).read_text(errors="replace") for part in ("out", "err"))


def stop(interrupted: bool) -> None:
    """The session is over: end this process's runs (a Ctrl-C, a -x stop: the runs not
    started report that), or wait for them all (another worker may need their results)."""
    global _stopping
    with _lock:
        _stopping = interrupted
        processes = [p for p in _mine.values() if p is not None]
    if interrupted:
        for process in processes:
            process.kill()
    for thread in _threads:
        thread.join()


def _path(name: str, part: str) -> Path:
    return Path(os.environ[FOLDER]) / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.{part}"


def _claim(name: str) -> bool:
    """Whether this process made the run's claim file, which holds its pid."""
    try:
        fd = os.open(_path(name, "claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    if pid in (0, os.getpid()):  # the claim being written; this process's own run
        return True
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _execute(name: str) -> None:
    """Run `name`, its output into its files, then its return code (or why it could not
    run) into its result file, written whole at once."""
    env_changes, options = RUNS[name]
    try:
        with QUIET:
            # a plain pytest session of its own: its runs, if any, are its own
            env = {k: v for k, v in os.environ.items() if k != FOLDER and not k.startswith("PYTEST_XDIST_")}
            for key, value in env_changes.items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value
            args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *options]
            with open(_path(name, "out"), "wb") as out, open(_path(name, "err"), "wb") as err, _lock:
                if _stopping:
                    raise RuntimeError("the test session ended first")
                process = _mine[name] = subprocess.Popen(args, env=env, stdout=out, stderr=err, cwd=HERE.parent)
        try:
            outcome = str(process.wait(timeout=TIMEOUT))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            outcome = f"no result in {TIMEOUT} s"
    except BaseException as e:  # noqa: BLE001 -- reported to the waiting test
        outcome = f"{type(e).__name__}: {e}"
    with QUIET:
        partial = _path(name, "rc.partial")
        partial.write_text(outcome)
        partial.replace(_path(name, "rc"))
