"""Throughput of bulk inference: the local `mnv2 predict` with 1 and 2 threads against
Ray Data (mnv2engine/bulk.py) with 1 and 2 actors of 1 thread, on N synthetic JPEGs.

The JPEGs (640x480, smooth random colour fields, seeded) go to a temporary folder, with
a seeded random MobileNetV2 1.0/224 as mnv2.h5 beside them. First the check: Ray's
predictions of the first images against the local predict's (the reference: top-k
equal, probabilities within 1e-6); then the timings, each mode once, on a warm Numba
cache. The local predict is the CLI's own loop (`mnv2 predict FOLDER --json`, output
discarded): one thread decodes and resizes, `--threads` share the forward passes. A Ray
job is timed whole (its actors start and load the engine, then classify), and steady:
the difference between the whole job and a job of two batches per actor, per image of
the difference (the actors' start cancels out). The overhead Ray adds per image is the
steady time per image of 1 actor less the local one thread's; its fixed cost is the
start of a job's actors (and, once, of Ray itself).

    python benchmarks/bulk.py [--n 2000]

Target (issue 17): Ray with 2 actors on 2 cores >= 85% of the local 2-thread throughput.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TARGET = 0.85
CHECKED = 32  # images whose Ray predictions are checked against the local predict
TOP = 5
BATCH = 16  # bulk.BATCH: images per map_batches call


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """n seeded 640x480 JPEGs: an 8x6 random colour field, resized bicubic (smooth, so
    the JPEG sizes and decode times are those of photos, not of noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((640, 480), Image.BICUBIC)
        paths.append(folder / f"{i:06d}.jpg")
        field.save(paths[-1], quality=90)
    return paths


def local_predict(folder: Path, weights: Path, threads: int) -> float:
    """Seconds of `mnv2 predict FOLDER --json --threads N` (stdout discarded)."""
    from mnv2engine.cli import main
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", str(folder), "--weights", str(weights), "--top", str(TOP), "--json",
                     "--threads", str(threads)])
    if code != 0:
        sys.exit(f"mnv2 predict exited {code}")
    return time.perf_counter() - start


def ray_job(images, weights, actors: int):
    """(seconds, rows) of one Ray job with `actors` actors of 1 thread, as the CLI runs it."""
    from mnv2engine import bulk
    start = time.perf_counter()
    dataset = bulk.classify(images, weights, top=TOP, threads=1, actors_per_node=actors)
    dataset.context.execution_options.preserve_order = True  # as bulk.write_predictions runs it
    rows = [row for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow")
            for row in batch.to_pylist()]
    return time.perf_counter() - start, rows


def check(rows, images, weights_path) -> None:
    """Ray's first CHECKED rows against Engine.predict on the same files: the local predict
    is the reference."""
    from mnv2engine import Engine
    engine = Engine.load(weights_path)
    worst = 0.0
    for row, path in zip(rows[:CHECKED], images[:CHECKED]):
        expected = engine.predict(path, top=TOP)
        if row["image"] != str(path) or row["index"] != [i for i, _, _ in expected]:
            sys.exit(f"{path}: Ray's top-{TOP} {row['index']} differ from the local predict's "
                     f"{[i for i, _, _ in expected]}; timings would be meaningless")
        worst = max(worst, float(np.abs(np.array(row["probability"]) - [p for _, _, p in expected]).max()))
    if worst > 1e-6:
        sys.exit(f"Ray's probabilities differ from the local predict's by {worst:.3g} (> 1e-6)")
    print(f"check vs the local predict, {CHECKED} images: top-{TOP} equal, max |diff| of probabilities "
          f"{worst:.3g} (<= 1e-6) OK")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic JPEGs (default 2000)")
    args = parser.parse_args(argv)
    if args.n < CHECKED:
        parser.error(f"--n must be at least {CHECKED}")

    import ray

    from mnv2engine import bulk
    from mnv2engine.weights import write_mnv2
    from mnv2engine.weights.random import random_weightset

    with tempfile.TemporaryDirectory(prefix="mnv2bulk") as tmp:
        folder, weights = Path(tmp) / "images", Path(tmp) / "mnv2.h5"
        folder.mkdir()
        start = time.perf_counter()
        images = make_jpegs(folder, args.n)
        write_mnv2(random_weightset(alpha=1.0, size=224, classes=1000, seed=0, padding="same"), weights)
        print(f"{args.n} JPEGs of 640x480 in {time.perf_counter() - start:.1f} s; MobileNetV2 1.0/224, random weights")

        warm = Path(tmp) / "warm"
        warm.mkdir()
        for path in images[:4]:
            (warm / path.name).write_bytes(path.read_bytes())
        for threads in (1, 2):  # compiles (first run only) and fills the page cache
            local_predict(warm, weights, threads)

        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            shared = bulk.shared_weights(weights)
            _, rows = ray_job(images[:CHECKED], shared, 2)  # also the workers' first import of numba
            check(rows, images, weights)
            seconds = {f"local predict, {t} thread{'s' * (t > 1)}": (local_predict(folder, weights, t), None, None)
                       for t in (1, 2)}
            for actors in (1, 2):
                small = BATCH * actors * 2  # two batches per actor: the fixed cost, and a little work
                short, _ = ray_job(images[:small], shared, actors)
                whole, rows = ray_job(images, shared, actors)
                if len(rows) != args.n or any(r["error"] for r in rows):
                    sys.exit(f"Ray returned {len(rows)} rows of {args.n}, or errors")
                steady = (args.n - small) / (whole - short)
                seconds[f"Ray, {actors} actor{'s' * (actors > 1)} x 1 thread"] = (whole, steady, short - small / steady)
        finally:
            ray.shutdown()

    print(f"\nRay start (once): {ray_start:.1f} s.  images/s on {args.n} images:")
    print(f"{'mode':<30} {'whole':>8} {'steady':>8}")
    rate = {}
    for mode, (whole, steady, _) in seconds.items():
        rate[mode] = (args.n / whole, steady or args.n / whole)
        print(f"{mode:<30} {rate[mode][0]:8.1f} {rate[mode][1]:8.1f}")
    local1, local2 = rate["local predict, 1 thread"][0], rate["local predict, 2 threads"][0]
    ray1, ray2 = rate["Ray, 1 actor x 1 thread"], rate["Ray, 2 actors x 1 thread"]
    print(f"\nper-image overhead of Ray (1 actor, steady, against the local 1 thread): "
          f"{1e3 * (1 / ray1[1] - 1 / local1):+.2f} ms per image ({1e3 / local1:.2f} ms locally)")
    print(f"fixed cost of a Ray job (its actors start and load the engine): "
          f"{seconds['Ray, 1 actor x 1 thread'][2]:.1f} s with 1 actor, "
          f"{seconds['Ray, 2 actors x 1 thread'][2]:.1f} s with 2")
    for label, value in (("steady", ray2[1]), ("whole job", ray2[0])):
        ratio = value / local2
        print(f"Ray 2 actors / local 2 threads, {label}: {ratio:.0%} "
              f"({'meets' if ratio >= TARGET else 'misses'} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
