"""Bulk inference on Ray Data (mnv2engine/bulk.py, mnv2 predict --ray) against the local
predict: the same top-k on the shared photos, probabilities within 1e-6; a damaged image is
a row with its error; bad settings refused before any actor starts; one job on a two-node
cluster on this machine, joined with --address."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require
from mnv2engine import Engine, EngineError
from mnv2engine.cli import main
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset

require("ray.data")
pq = require("pyarrow.parquet")
import ray  # noqa: E402  (imports, as require found)
from mnv2engine import bulk  # noqa: E402

TF2 = "models/tf2_mobilenet_v2_1.0_224_ptq.tflite"
STEP_TIMEOUT = 120  # seconds for any one ray start or job in a subprocess
TEST_TIMEOUT = 300  # seconds for a whole test; nothing waits forever


@pytest.fixture(autouse=True)
def bounded():
    """Every test here ends within TEST_TIMEOUT seconds, or fails: SIGALRM interrupts an
    in-process job's wait (subprocesses have their own timeouts)."""
    def give_up(signum, frame):
        raise TimeoutError(f"gave up after {TEST_TIMEOUT} s")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for the module's in-process jobs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(shared_data, photo_paths, tmp_path_factory):
    """The shared photos, a damaged JPEG, and what the local predict says of each (top 5)."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    engine = Engine.load(shared_data / TF2)
    return [*photo_paths, broken], {str(p): engine.predict(p, top=5) for p in photo_paths}


def assert_as_local(rows, local, tolerance=1e-6):
    """Rows (image, index, label, probability, error) against the local predict's lists."""
    assert [r["image"] for r in rows] == [*local, rows[-1]["image"]]  # the source's order, the broken last
    for row in rows[:-1]:
        expected = local[row["image"]]
        assert row["error"] is None
        assert row["index"] == [i for i, _, _ in expected] and row["label"] == [l for _, l, _ in expected]
        assert np.abs(np.array(row["probability"]) - [p for _, _, p in expected]).max() <= tolerance
    assert rows[-1]["index"] is None and "broken.jpg: damaged or truncated image" in rows[-1]["error"]


def test_api_writes_parquet_with_the_local_predictions(local_ray, shared_data, photos, tmp_path):
    images, local = photos
    predictions = bulk.classify(images, shared_data / TF2, top=5)  # a path every node can read
    count, failed = bulk.write_predictions(predictions, tmp_path / "p.parquet")
    assert count == len(images) and list(failed) == [str(images[-1])]
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema == bulk.SCHEMA
    assert_as_local(table.to_pylist(), local)


def test_cli_jsonl_holds_the_objects_of_json(local_ray, shared_data, photos, tmp_path, capsys):
    images, _ = photos
    args = ["predict", *map(str, images), "--weights", str(shared_data / TF2), "--top", "3"]
    assert main([*args, "--json"]) == 1
    local = json.loads(capsys.readouterr().out)
    assert main([*args, "--ray", "--out", str(tmp_path / "p.jsonl")]) == 1  # a failed image: exit code 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and "1 of 10 could not be read" in err
    remote = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r.keys() for r in remote] == [r.keys() for r in local] and remote[-1] == local[-1]
    for r, l in zip(remote[:-1], local[:-1]):
        assert [(t["index"], t["label"]) for t in r["top"]] == [(t["index"], t["label"]) for t in l["top"]]
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(r["top"], l["top"])) <= 1.01e-6


def test_a_dataset_of_file_bytes(local_ray, tmp_path):
    """A Dataset of one's own: read_binary_files gives each file's bytes and path."""
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), tmp_path / "m.h5")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), np.uint8)).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    dataset = ray.data.read_binary_files(str(folder), include_paths=True)
    with pytest.raises(EngineError, match="2 CPUs besides 1 for the dataset's own tasks"):
        bulk.classify(dataset, tmp_path / "m.h5", top=2, threads=2)  # its reads would wait for CPUs forever
    rows = sorted(bulk.classify(dataset, bulk.shared_weights(tmp_path / "m.h5"), top=2).take_all(),
                  key=lambda r: r["image"])
    engine = Engine.load(tmp_path / "m.h5")
    for row, path in zip(rows[:3], sorted(folder.glob("[012].png"))):
        assert row["image"] == str(path) and row["error"] is None
        assert row["index"] == [i for i, _, _ in engine.predict(path, top=2)]
    assert rows[3]["index"] is None and rows[3]["error"].startswith(f"{folder / '3.png'}: ")


def test_cli_without_an_address_starts_and_stops_its_own_ray(tmp_path):
    """The command as a user runs it: a process of its own, no Ray running in it."""
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), tmp_path / "m.h5")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    job = subprocess.run([sys.executable, "-m", "mnv2engine.cli", "predict", str(tmp_path / "a.png"), "--weights",
                          str(tmp_path / "m.h5"), "--top", "2", "--ray", "--out", str(tmp_path / "p.jsonl")],
                         env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert job.returncode == 0, job.stderr
    assert "1 image classified" in job.stderr and "on 2 actors on 1 node," in job.stderr
    [row] = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert row["image"] == str(tmp_path / "a.png") and len(row["top"]) == 2


def test_a_failure_on_a_worker_is_an_engine_error_with_its_cause(local_ray, tmp_path):
    """Weights at a path a worker cannot read (here: gone after the driver's check): the
    job stops, naming the file, and leaves no output behind."""
    weights = tmp_path / "m.h5"
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), weights)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    predictions = bulk.classify([tmp_path / "a.png"], weights, top=2)
    weights.unlink()
    with pytest.raises(EngineError, match=f"the Ray job failed: {weights}: no such file"):
        bulk.write_predictions(predictions, tmp_path / "p.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_bad_settings_fail_on_the_driver_naming_the_problem(local_ray, tmp_path, capsys):
    weights = tmp_path / "m.h5"
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), weights)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    refusals = [
        (dict(top=5), "top must be an integer from 1 to 4"),
        (dict(threads=3), "no node of the Ray cluster has 3 CPUs"),
        (dict(actors_per_node=0), "actors per node must be a positive integer"),
        (dict(t=0), "t must be >= 1"),
        (dict(threads=0), "threads must be a positive integer"),
    ]
    for settings, message in refusals:
        with pytest.raises(EngineError, match=message):
            bulk.classify([tmp_path / "a.png"], weights, **{"top": 2, **settings})
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no images found"):
        bulk.classify([tmp_path / "empty"], weights, top=2)
    with pytest.raises(EngineError, match="needs a 'path' column"):
        bulk.classify(ray.data.from_items([{"file": "a.png"}]), weights, top=2)
    with pytest.raises(EngineError, match="must be a path, mnv2.h5 bytes"):
        bulk.classify([tmp_path / "a.png"], 42, top=2)
    cli = ["predict", str(tmp_path / "a.png"), "--weights", str(weights), "--top", "2"]
    for flags, message in ((["--ray"], "add --out FILE.jsonl"), (["--out", "x.jsonl"], "--out is for a Ray job"),
                           (["--ray", "--out", str(tmp_path / "p.csv")], "must be a .jsonl or a .parquet"),
                           (["--ray", "--out", str(tmp_path / "no" / "p.jsonl")], "does not exist"),
                           (["--ray", "--json", "--out", str(tmp_path / "p.jsonl")], "with --ray they go to --out")):
        assert main([*cli, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mnv2: error:") and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob(".p.*"))


def test_an_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys):
    """ray.init retries a silent address for minutes; the CLI asks the port first."""
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), tmp_path / "m.h5")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    with socket_nobody_listens_on() as port:
        assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "m.h5"), "--ray",
                     "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"cannot start or join the Ray cluster at 127.0.0.1:{port}" in err and "nothing answers" in err


class socket_nobody_listens_on:
    """A free port, bound (so no one else takes it) but not listening: connections are refused."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


# -- a two-node cluster on this machine ------------------------------------------------

def free_ports(count: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_ports() -> list[str]:
    """Ports of a node of its own, free now, so two nodes share a machine without
    clashing: its services', and 20 for its workers (the actors, and Ray Data's own)."""
    names = ("--object-manager-port", "--node-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    ports = free_ports(len(names) + 20)
    return [*(f"{name}={port}" for name, port in zip(names, ports)),
            f"--worker-port-list={','.join(map(str, ports[len(names):]))}"]


def processes_of(folders) -> list[int]:
    """The processes whose command line names one of `folders` (the nodes' own temp
    folders: gcs_server, raylet, the monitors), and their descendants (the raylet's
    workers and agents). Nothing else on the machine is touched."""
    parent, named = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if any(str(f) in cmdline for f in folders) and int(proc.name) != os.getpid():
            named.add(int(proc.name))
    found, grew = set(named), True
    while grew:
        children = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def stop(pids, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.2)


@pytest.fixture
def two_node_cluster():
    """`ray start --head` on 127.0.0.1 and a second `ray start --address`, each with its
    own ports and temp folder (short: Ray's socket paths must fit 107 characters), 1 CPU
    each; yields the head's address. Torn down by stopping exactly their processes."""
    folders = [Path(tempfile.mkdtemp(prefix="mnv2ray", dir="/tmp")) for _ in range(2)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_cli = Path(sys.executable).with_name("ray")
    head_port, dashboard_port = free_ports(2)
    address = f"127.0.0.1:{head_port}"
    starts = [
        [ray_cli, "start", "--head", f"--port={head_port}", f"--dashboard-port={dashboard_port}",
         "--include-dashboard=false", *node_ports()],
        [ray_cli, "start", f"--address={address}", *node_ports()],
    ]
    try:
        for command, folder in zip(starts, folders):
            subprocess.run([*command, "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={folder}",
                            "--disable-usage-stats"], env=env, check=True, timeout=STEP_TIMEOUT,
                           capture_output=True)
        yield address, env
    finally:
        stop(processes_of(folders))
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_cli_joins_a_two_node_cluster(two_node_cluster, shared_data, photos, tmp_path):
    address, env = two_node_cluster
    images, local = photos
    job = subprocess.run([sys.executable, "-m", "mnv2engine.cli", "predict", *map(str, images), "--weights",
                          str(shared_data / TF2), "--top", "5", "--ray", "--address", address,
                          "--out", str(tmp_path / "p.parquet")],
                         env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert job.returncode == 1, job.stderr
    assert "2 actors on 2 nodes" in job.stderr
    assert_as_local(pq.read_table(tmp_path / "p.parquet").to_pylist(), local)
