"""The suite's runs of other builds: test files run again by pytest in a subprocess, the
kernels compiled for another target (NUMBA_CPU_NAME=haswell or generic, a tile table).

Each run takes a minute or two, nearly all of it Numba compiling on one core, while the
suite's own process keeps the other core busy. So the runs start as soon as the tests are
collected (conftest.py), one after another on a background thread, and each test only
waits for its run's result: the runs' compiles overlap the rest of the suite.

A test module declares its runs at import (`declare`), and its test marks itself
`@pytest.mark.rebuild(name)` and asserts on `result(name)`. When the session ends (a
failure under -x, a Ctrl-C), the runs still going are ended (`stop`): none outlives it.

tracemalloc counts every thread's allocations: the background thread allocates (starting
a run, keeping its result) only while it holds QUIET, which a test holds while it measures
(conftest.traced).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
TIMEOUT = 1500  # seconds per run


@dataclass
class Run:
    env: dict[str, str | None]  # variables to set, or to remove (None)
    args: list[str]             # pytest's arguments after its options
    done: threading.Event = field(default_factory=threading.Event)
    result: subprocess.CompletedProcess | BaseException | None = None
    process: subprocess.Popen | None = None  # while it runs: what stop() ends

    def execute(self) -> None:
        try:
            with QUIET:
                args = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *self.args]
                # The output goes to files, read by the waiting test: no reads here.
                out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
                with _lock:
                    if _stopping:
                        raise RuntimeError("the test session ended first")
                    self.process = subprocess.Popen(args, env=self._environment(), stdout=out, stderr=err,
                                                    cwd=HERE.parent)
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
            with QUIET:
                self.result = subprocess.CompletedProcess(args, self.process.returncode, out, err)
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting test
            with QUIET:
                self.result = e
        self.done.set()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env


RUNS: dict[str, Run] = {}
QUIET = threading.Lock()  # held by a test measuring memory (module docstring)
_lock = threading.Lock()
_started: set[str] = set()
_stopping = False


def declare(name: str, env: dict[str, str | None], files: list[str], *options: str) -> None:
    """A run of `files` (in tests/) with `env` changed, under `name`."""
    RUNS[name] = Run(env, [str(HERE / f) for f in files] + list(options))


def start(names: list[str]) -> None:
    """Run these (the declared ones not yet started) one after another, in the background."""
    with _lock:
        todo = [RUNS[n] for n in names if n in RUNS and n not in _started]
        _started.update(n for n in names if n in RUNS)
    if todo:
        threading.Thread(target=lambda: [run.execute() for run in todo], daemon=True).start()


def result(name: str) -> subprocess.CompletedProcess:
    """The run's finished process (started now if it was not), or the run's own failure raised."""
    start([name])
    run = RUNS[name]
    run.done.wait()
    if isinstance(run.result, BaseException):
        raise run.result
    done = run.result
    if not isinstance(done.stdout, str):  # the files, read once
        done.stdout, done.stderr = (_text(f) for f in (done.stdout, done.stderr))
    return done


def _text(file) -> str:
    file.seek(0)
    text = file.read().decode(errors="replace")
    file.close()
    return text


def check(name: str, what: str) -> None:
    """Fail the calling test unless the run passed, with its output's end."""
    run = result(name)
    assert run.returncode == 0, f"{what} failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"


def stop() -> None:
    """End the runs still going (the session is over: a -x stop, a Ctrl-C): none outlives it."""
    global _stopping
    with _lock:
        _stopping = True
        running = [run.process for run in RUNS.values() if run.process is not None and run.process.poll() is None]
    for process in running:
        process.kill()
