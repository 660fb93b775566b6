"""Bulk inference on Ray Data: one Engine per actor, from one machine to a cluster.

A large image collection outgrows one process; Ray Data already schedules, streams and
retries the work over many, so the engine only supplies the per-batch step:

    import ray
    from mnv2engine import bulk
    ray.init()                                          # or ray.init(address="auto")
    rows = bulk.classify(["photos/"], bulk.shared_weights("mnv2.h5"), top=5)
    bulk.write_predictions(rows, "predictions.parquet")  # or .jsonl

`classify` lists the images on the driver, and `ray.data.from_items` feeds their paths
to `map_batches` with `Classifier`: an actor class that loads the Engine once and then
preprocesses and classifies batch after batch, so every node must see the images at the
same paths (a shared filesystem). A Dataset of one's own works too, with a `path` column
and, optionally, the files' bytes in `bytes` (`ray.data.read_binary_files(...,
include_paths=True)` reads them from object storage). The weights come from a path
every node can read, or from `shared_weights`: the file's bytes in Ray's object store.

Each row is one image: `image` (its path), `index`, `label`, `probability` (the top-k,
as lists), or `error` for an image that cannot be read; the job goes on.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .engine import Engine
from .errors import EngineError, InputError
from .files import check_destination, reason, temporary, writing
from .preprocess import decode, expand_images

BATCH = 16  # images per map_batches call, as local predict: a batch splits across an actor's threads
SCHEMA = pa.schema([("image", pa.string()), ("index", pa.list_(pa.int64())), ("label", pa.list_(pa.string())),
                    ("probability", pa.list_(pa.float64())), ("error", pa.string())])
FORMATS = (".jsonl", ".parquet")
CONNECT_TIMEOUT = 10.0  # seconds for a cluster's head to accept a connection


def shared_weights(path):
    """A weight file (any format `mnv2 convert` reads), validated here and put in Ray's
    object store as mnv2.h5 bytes, for workers that cannot read the file: 14 MB at alpha
    1.0, fetched once per node."""
    import ray

    from .weights import read_any
    from .weights.h5format import mnv2_bytes
    return ray.put(mnv2_bytes(read_any(path)))


def load_engine(weights, t=None, rows: bool = False, threads: int = 1, quantized: bool | None = None) -> Engine:
    """An Engine from a weight file's path, from mnv2.h5 bytes, or from the object
    store's reference to them (`shared_weights`)."""
    import ray
    if isinstance(weights, ray.ObjectRef):
        weights = ray.get(weights)
    if isinstance(weights, (bytes, bytearray, memoryview)):
        from .weights.h5format import read_mnv2
        return Engine(read_mnv2(io.BytesIO(bytes(weights))), t=t, rows=rows, threads=threads, quantized=quantized)
    if isinstance(weights, (str, Path)):
        return Engine.load(weights, t=t, rows=rows, threads=threads, quantized=quantized)
    raise EngineError(f"weights must be a path, mnv2.h5 bytes or shared_weights(path), got {type(weights).__name__}")


class Classifier:
    """The `map_batches` step: an Engine loaded once per actor, then per batch (a dict of
    columns: `path`, and the files' bytes in `bytes` where given) the top-k of each image,
    as a pyarrow table of SCHEMA. An image that cannot be read is a row with its error."""

    def __init__(self, weights, top: int = 5, size=None, crop: bool = True, t=None, rows: bool = False,
                 threads: int = 1, quantized: bool | None = None):
        self.engine = load_engine(weights, t, rows, threads, quantized)
        self.engine.check_top(top)
        self.top, self.size, self.crop = top, self.engine.input_size(size), crop

    def __call__(self, batch: dict) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        sources = batch["bytes"] if "bytes" in batch else paths
        inputs, kept, errors = [], [], [None] * len(paths)
        for row, (path, source) in enumerate(zip(paths, sources)):
            try:
                image = decode(io.BytesIO(source), path) if isinstance(source, bytes) else path
                inputs.append(self.engine.preprocess(image, self.size, self.crop))
                kept.append(row)
            except InputError as e:
                errors[row] = str(e)
        index, label, probability = [None] * len(paths), [None] * len(paths), [None] * len(paths)
        if inputs:
            for row, top in zip(kept, self.engine.classify(np.stack(inputs), self.top)):
                index[row], label[row], probability[row] = (list(column) for column in zip(*top))
        return pa.Table.from_pydict(dict(image=paths, index=index, label=label, probability=probability,
                                         error=errors), schema=SCHEMA)


def classify(source, weights, *, top: int = 5, size=None, crop: bool = True, t=None, rows: bool = False,
             threads: int = 1, quantized: bool | None = None, actors_per_node: int | None = None,
             batch_size: int = BATCH):
    """The lazy Dataset of predictions (SCHEMA) of `source`: image paths and folders (a
    folder's images in name order), or a ray.data.Dataset with a `path` column (and
    `bytes`). Ray must be running (ray.init).

    Each actor holds one Engine with `threads` threads and reserves as many CPUs;
    `actors_per_node` (default: a node's CPUs // threads, so the actors fill the cores)
    is capped by each node's CPUs. A Dataset's own tasks (its reads) need CPUs too: with
    every CPU held by an actor they waited forever (measured: read_binary_files, one
    actor of 2 threads on 2 CPUs), so for a Dataset the actors leave one CPU per node.
    The settings are checked here, on the driver, with an Engine of the same weights, so
    a bad one fails before any actor starts.
    """
    import ray
    if not ray.is_initialized():
        raise EngineError("Ray is not running: call ray.init() (ray.init(address='auto') joins a cluster)")
    Classifier(weights, top, size, crop, t, rows, threads, quantized)  # refuses bad weights and settings, naming them
    given = isinstance(source, ray.data.Dataset)
    actors, _ = placement(threads, actors_per_node, spare_cpus=1 if given else 0)
    if given:
        dataset = source
        if "path" not in dataset.columns():
            raise EngineError(f"the dataset needs a 'path' column (it has {dataset.columns()}): e.g. "
                              "ray.data.read_binary_files(..., include_paths=True)")
    else:
        images = expand_images([source] if isinstance(source, (str, Path)) else source)
        if not images:
            raise EngineError("no images found")
        dataset = ray.data.from_items([{"path": str(p)} for p in images])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EngineError(f"batch_size must be a positive integer, got {batch_size!r}")
    return dataset.map_batches(
        Classifier, fn_constructor_kwargs=dict(weights=weights, top=top, size=size, crop=crop, t=t, rows=rows,
                                               threads=threads, quantized=quantized),
        batch_size=batch_size, batch_format="numpy", num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(size=actors))


def placement(threads: int, actors_per_node: int | None, spare_cpus: int = 0) -> tuple[int, int]:
    """(actors, nodes that hold some) for the cluster's live nodes: per node,
    `actors_per_node` (default: as many as its CPUs less `spare_cpus` hold at `threads`
    each), at most that. More would wait for CPUs forever, so none fitting anywhere is
    refused."""
    import ray
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EngineError(f"threads must be a positive integer, got {threads!r}")
    if actors_per_node is not None and (isinstance(actors_per_node, bool) or not isinstance(actors_per_node, int)
                                        or actors_per_node < 1):
        raise EngineError(f"actors per node must be a positive integer, got {actors_per_node!r}")
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    fits = [max(math.floor((c - spare_cpus) / threads), 0) for c in cpus]
    per_node = [f if actors_per_node is None else min(f, actors_per_node) for f in fits]
    if sum(per_node) == 0:
        spare = f" besides {spare_cpus} for the dataset's own tasks" if spare_cpus else ""
        raise EngineError(f"no node of the Ray cluster has {threads} CPUs{spare} for an actor of {threads} "
                          f"threads (the nodes' CPUs: {cpus}); use fewer threads per actor")
    return sum(per_node), sum(n > 0 for n in per_node)


def write_predictions(dataset, out) -> tuple[int, dict[str, str]]:
    """Run the Dataset of predictions into one file `out`, in the source's order:
    `.jsonl`, one object per image as `mnv2 predict --json` prints it, or `.parquet`,
    the columns of SCHEMA. Streams (a million rows need not fit in memory) into a
    temporary file renamed into place at the end (files.py), so a failed job leaves
    nothing behind. Returns (images, {image: error} of those that could not be read)."""
    out = Path(out)
    check_output(out)
    dataset.context.execution_options.preserve_order = True
    images, failed = 0, {}
    with temporary(out) as tmp:
        with writing(out), _writer(tmp, out.suffix.lower()) as write, ray_errors():
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                write(batch)
                images += batch.num_rows
                errors = batch.column("error").to_pylist()
                failed.update((image, e) for image, e in zip(batch.column("image").to_pylist(), errors) if e)
        with writing(out):
            tmp.replace(out)
    return images, failed


def check_output(out: Path) -> None:
    """Refuse an output of another format, a folder, or in a folder that does not exist
    (before a job runs for hours to nowhere)."""
    if out.suffix.lower() not in FORMATS:
        raise EngineError(f"{out}: the output must be a .jsonl or a .parquet file")
    check_destination(out)


@contextlib.contextmanager
def _writer(path: Path, suffix: str):
    """A function that appends a pyarrow table of SCHEMA to the file at `path`."""
    if suffix == ".parquet":
        with pq.ParquetWriter(path, SCHEMA) as parquet:
            yield lambda table: parquet.write_table(table.select(SCHEMA.names).cast(SCHEMA))
        return
    with open(path, "w") as f:
        yield lambda table: f.writelines(json.dumps(as_json(row)) + "\n" for row in table.to_pylist())


def as_json(row: dict) -> dict:
    """A row as `mnv2 predict --json` shows an image."""
    if row["error"] is not None:
        return {"image": row["image"], "error": row["error"]}
    return {"image": row["image"], "top": [{"index": i, "label": l, "probability": round(p, 6)}
                                           for i, l, p in zip(row["index"], row["label"], row["probability"])]}


@contextlib.contextmanager
def ray_errors():
    """A failed Ray job as an EngineError with the cause's own message (the worker's
    EngineError where it was one, e.g. a weight file missing on a node), not the
    remote traceback Ray's message carries."""
    import ray
    try:
        yield
    except ray.exceptions.RayError as e:
        raise EngineError(f"the Ray job failed: {cause(e)}") from None


def cause(error: Exception) -> str:
    """The innermost message of a Ray error: an EngineError in its chain, else the
    traceback's last line ('SomeError: message'), else its first."""
    seen = error
    while seen is not None:
        if isinstance(seen, EngineError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        raised = re.match(r"^([\w.]*\.)?(\w+(?:Error|Exception)): (.*)$", line)
        if raised:  # our own errors name the problem; others keep their class's name
            module, name, message = raised.groups()
            return message if (module or "").startswith("mnv2engine.") else f"{name}: {message}"
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def session(address: str | None = None):
    """Ray for the length of the block: without an address a local Ray (this machine's
    cores), shut down at the end; with one ('auto', or HOST:PORT of the head), the
    cluster joined. A Ray already running in this process is used as it is."""
    import ray
    if ray.is_initialized() and address is None:
        yield
        return
    import ray.data  # configures its loggers on import: quieted after it
    # No progress lines every 10 s on a pipe, nor a failed job's remote traceback: the
    # failure is raised as an EngineError with its cause (ray_errors), and Ray Data's log
    # files in the session's folder keep the rest.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    try:
        if address is not None:
            check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EngineError(f"cannot start or join {where} ({str(e).splitlines()[0]})") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a cluster address where nothing answers: ray.init retries a silent address
    for minutes (measured: still waiting after 200 s). 'auto' is the cluster `ray start`
    recorded on this machine, as ray.init finds it (ConnectionError where there is none)."""
    from ray._private.services import canonicalize_bootstrap_address
    host, _, port = canonicalize_bootstrap_address(address).rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {host}:{port}: {reason(e) if e.strerror else 'timed out'}") from None
