"""Bulk inference on Ray Data (mnv2engine/bulk.py, mnv2 predict --ray) against the local
predict: the same top-k on the shared photos, probabilities within 1e-6; and against a
PyTorch model of the same weights on images of the tests' own, over several batches and
blocks. Every row is its own image's, in the source's order, a damaged image among good ones
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

from conftest import require, softmax
from mnv2engine import Engine, EngineError, convert
from mnv2engine.cli import main
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2, randomized, run_with_blocks

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
    """The shared photos with a damaged JPEG among them (the fifth: a batch of 3 holds it
    in its middle, and the photos after it must keep their own rows), and what the local
    predict says of each photo, one at a time (top 5)."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    engine = Engine.load(shared_data / TF2)
    return [*photo_paths[:4], broken, *photo_paths[4:]], {str(p): engine.predict(p, top=5) for p in photo_paths}


def assert_as_local(rows, images, local, tolerance=1e-6):
    """Rows (image, index, label, probability, error) in the order of `images`, each
    against the local predict of its own image; the damaged one a row with its error."""
    assert [r["image"] for r in rows] == [str(p) for p in images]
    for row in rows:
        if row["image"] not in local:
            assert row["index"] is None and "broken.jpg: damaged or truncated image" in row["error"]
            continue
        expected = local[row["image"]]
        assert row["error"] is None
        assert row["index"] == [i for i, _, _ in expected] and row["label"] == [l for _, l, _ in expected]
        assert np.abs(np.array(row["probability"]) - [p for _, _, p in expected]).max() <= tolerance


@pytest.mark.slow
def test_api_writes_parquet_with_the_local_predictions(local_ray, shared_data, photos, tmp_path):
    images, local = photos
    # a path every node can read; batches of 3 on the 2 actors, the damaged image in the second
    predictions = bulk.classify(images, shared_data / TF2, top=5, batch_size=3)
    count, failed = bulk.write_predictions(predictions, tmp_path / "p.parquet")
    assert count == len(images) and list(failed) == [str(images[4])]
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema == bulk.SCHEMA
    assert_as_local(table.to_pylist(), images, local)


@pytest.mark.slow
def test_cli_jsonl_holds_the_objects_of_json(local_ray, shared_data, photos, tmp_path, capsys):
    images, _ = photos
    args = ["predict", *map(str, images), "--weights", str(shared_data / TF2), "--top", "3"]
    assert main([*args, "--json"]) == 1
    local = json.loads(capsys.readouterr().out)
    assert main([*args, "--ray", "--out", str(tmp_path / "p.jsonl")]) == 1  # a failed image: exit code 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and "1 of 10 could not be read" in err
    remote = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["image"] for r in remote] == [r["image"] for r in local] == list(map(str, images))
    assert [r.keys() for r in remote] == [r.keys() for r in local] and remote[4] == local[4]  # the damaged one
    for r, l in [(r, l) for r, l in zip(remote, local) if "top" in l]:
        assert [(t["index"], t["label"]) for t in r["top"]] == [(t["index"], t["label"]) for t in l["top"]]
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(r["top"], l["top"])) <= 1.01e-6


# torchvision's normalisation (the converter's recipe for a state_dict), written out here:
# the network input is (pixel / 255 - mean) / std
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
TOP = 3
TOLERANCE = 1e-5  # a probability, the engine's against PyTorch's


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """A PyTorch MobileNetV2 (alpha 0.35, 8 classes) and the mnv2.h5 that convert makes
    of its state_dict (input 32x32)."""
    folder = tmp_path_factory.mktemp("twin")
    model = randomized(MobileNetV2(num_classes=8, width_mult=0.35), 1)
    torch.save(model.state_dict(), folder / "m.pth")
    convert(folder / "m.pth", folder / "m.h5", size=32)
    return model, folder / "m.h5"


def small_image(rng) -> np.ndarray:
    """32x32 RGB: noise around a colour of its own, so that each image has its own top-k."""
    return np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)


def pytorch_tops(model, pixels: dict) -> dict:
    """{image: (indices, probabilities)} of PyTorch's top TOP for each image's 32x32
    pixels: the input at its own size, as predict with crop=False feeds it (Pillow's
    resize to the size an image has is a copy)."""
    names = list(pixels)
    x = np.stack([(pixels[name] / 255.0 - MEAN) / STD for name in names]).astype(np.float32)
    p = softmax(run_with_blocks(model, x)["logits"])
    order = np.argsort(-p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1)[:, :TOP + 1]
    # the top-k order is PyTorch's, not a tie, and no two images share a top-k: a row
    # given another image's predictions cannot pass
    assert (ranked[:, :-1] - ranked[:, 1:]).min() > 10 * TOLERANCE
    tops = {name: (order[i, :TOP].tolist(), ranked[i, :TOP].tolist()) for i, name in enumerate(names)}
    for a in names:
        for b in names:
            assert a == b or tops[a][0] != tops[b][0] or \
                np.abs(np.subtract(tops[a][1], tops[b][1])).max() > 10 * TOLERANCE
    return tops


def assert_each_row_its_own(rows, images, tops, errors):
    """Rows (image, index, probability, error) in the order of `images`: each good one
    with PyTorch's top-k of its own pixels, each bad one with its own error."""
    assert [r["image"] for r in rows] == [str(p) for p in images]
    for row in rows:
        if row["image"] in errors:
            assert row["index"] is None and row["error"].startswith(f"{row['image']}: {errors[row['image']]}")
            continue
        index, probability = tops[row["image"]]
        assert row["error"] is None and row["index"] == index, row["image"]
        assert np.abs(np.subtract(row["probability"], probability)).max() <= TOLERANCE, row["image"]


@pytest.mark.slow
def test_a_dataset_of_file_bytes(local_ray, twin, tmp_path):
    """A Dataset of one's own: read_binary_files gives each file's bytes and path. Here in
    4 blocks, held in memory and the files then removed (the workers have the bytes only,
    as from object storage), with damaged files among good ones, three in a row (a batch
    of 2 with no image to classify): each row is its own file's, in the dataset's order,
    with PyTorch's top 3 of the same weights."""
    model, weights = twin
    folder = tmp_path / "imgs"
    folder.mkdir()
    damaged = {3: b"\x89PNG\r\n\x1a\n damaged", 6: b"", 7: b"GIF89a", 8: b"not an image"}
    rng, pixels, errors = np.random.default_rng(2), {}, {}
    for i in range(12):
        path = folder / f"{i:02d}.png"
        if i in damaged:
            path.write_bytes(damaged[i])
            errors[str(path)] = "damaged or truncated image" if i == 3 else "not an image file"
        else:
            pixels[str(path)] = small_image(rng)
            Image.fromarray(pixels[str(path)]).save(path)
    tops = pytorch_tops(model, pixels)
    dataset = ray.data.read_binary_files(str(folder), include_paths=True, override_num_blocks=4).materialize()
    assert dataset.num_blocks() == 4
    order = [row["path"] for row in dataset.select_columns(["path"]).take_all()]
    assert sorted(order) == sorted([*pixels, *errors])
    shutil.rmtree(folder)
    with pytest.raises(EngineError, match="2 CPUs besides 1 for the dataset's own tasks"):
        bulk.classify(dataset, weights, top=TOP, threads=2)  # its reads would wait for CPUs forever
    predictions = bulk.classify(dataset, bulk.shared_weights(weights), top=TOP, crop=False, batch_size=2)
    count, failed = bulk.write_predictions(predictions, tmp_path / "p.parquet")
    assert count == 12 and sorted(failed) == sorted(errors)
    assert_each_row_its_own(pq.read_table(tmp_path / "p.parquet").to_pylist(), order, tops, errors)


@pytest.mark.slow
def test_cli_keeps_each_image_with_its_own_row_over_batches(local_ray, twin, tmp_path, capsys):
    """mnv2 predict --ray on 40 images: three batches of up to 16 on the two actors. An
    actor takes two batches at a time (Ray Data's default), so the first actor ready takes
    the first two; the first is slow (three 4000x4000 images to decode), so the third, on
    the other actor, ends before it and its rows would come first unless the order is
    kept. Damaged images in the middle of the first and last batches, a missing one first
    in the second. Each line is its own image's, in the order given, with PyTorch's top 3
    of the same weights."""
    model, weights = twin
    rng, images, pixels = np.random.default_rng(3), [], {}
    errors = {str(tmp_path / f"{i:02d}.png"): "damaged or truncated image" for i in (5, 33)}
    errors[str(tmp_path / "16.png")] = "no such image file"
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        images.append(path)
        if i in (5, 33):
            path.write_bytes(b"\x89PNG\r\n\x1a\n damaged")
        elif i < 3:  # one colour: resized, still that colour
            colour = rng.integers(0, 256, 3)
            Image.new("RGB", (4000, 4000), tuple(int(c) for c in colour)).save(path)
            pixels[str(path)] = np.broadcast_to(colour, (32, 32, 3)).astype(np.uint8)
        elif i != 16:
            pixels[str(path)] = small_image(rng)
            Image.fromarray(pixels[str(path)]).save(path)
    assert bulk.BATCH == 16
    tops = pytorch_tops(model, pixels)
    assert main(["predict", *map(str, images), "--weights", str(weights), "--top", str(TOP), "--no-crop", "--ray",
                 "--out", str(tmp_path / "p.jsonl")]) == 1
    assert "3 of 40 could not be read" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = [dict(image=r["image"], error=r.get("error"), index=[t["index"] for t in r["top"]] if "top" in r else None,
                 probability=[t["probability"] for t in r.get("top", ())]) for r in lines]
    assert_each_row_its_own(rows, images, tops, errors)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_joins_a_two_node_cluster(two_node_cluster, shared_data, photos, tmp_path):
    address, env = two_node_cluster
    images, local = photos
    job = subprocess.run([sys.executable, "-m", "mnv2engine.cli", "predict", *map(str, images), "--weights",
                          str(shared_data / TF2), "--top", "5", "--ray", "--address", address,
                          "--out", str(tmp_path / "p.parquet")],
                         env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert job.returncode == 1, job.stderr
    assert "2 actors on 2 nodes" in job.stderr
    assert_as_local(pq.read_table(tmp_path / "p.parquet").to_pylist(), images, local)
