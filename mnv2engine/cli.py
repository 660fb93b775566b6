"""The `mnv2` command: demo, convert, predict."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import EngineError
from .files import reason
from .preprocess import expand_images


def _t_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"t must be an integer number of slices, got {text!r}") from None


def _add_engine_args(p):
    p.add_argument("--t", type=_t_arg, default=1, help="expansion slices per block (1 = materialized)")
    p.add_argument("--rows", action="store_true", help="lowest memory: the first blocks piped (row by row across blocks), the others streamed")
    p.add_argument("--threads", type=int, default=1, help="threads that share each image (or split a batch of at least as many images)")
    p.add_argument("--float", action="store_true", help="run a quantized model (TFLite int8/uint8) in float32 on its dequantized weights, not in integer")


def _quantized(args):
    """--float: False; else the engine's default (a quantized model runs in integer)."""
    return False if args.float else None


def cmd_demo(args) -> int:
    from .compiling import announce_compilation
    with announce_compilation():
        return _demo(args)


def _demo(args) -> int:
    from .engine import Engine
    t0 = time.perf_counter()
    if args.weights:
        engine = Engine.load(args.weights, t=args.t, rows=args.rows, threads=args.threads, quantized=_quantized(args))
        what = args.weights
    else:
        engine = Engine.random(alpha=args.alpha, size=args.size, t=args.t, rows=args.rows, threads=args.threads)
        what = f"a seeded random MobileNetV2 {args.alpha}/{args.size} (no weight file given)"
    print(f"model: {what}\n       {engine!r}")
    image = _demo_image(engine.arch.size)
    first = engine.predict(image, top=5)
    print(f"load + first prediction (includes Numba compilation on a cold cache): "
          f"{time.perf_counter() - t0:.2f} s")
    batch = np.zeros((1, *engine.arch.size, 3), np.float32)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        engine.forward(batch)
        times.append(time.perf_counter() - t)
    print(f"forward, batch 1: median {1e3 * np.median(times):.1f} ms over {args.runs} runs")
    print(f"peak activation memory (planner): {engine.memory_report().peak_bytes / 2**20:.2f} MiB")
    print("top-5 on a synthetic test image:")
    for index, label, p in first:
        print(f"  {p:7.4f}  {index:5d}  {label}")
    return 0


def _demo_image(size):
    """A deterministic colourful test pattern, HWC uint8."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 4 % 256)], -1).astype(np.uint8)


def cmd_convert(args) -> int:
    from .weights import convert
    ws = convert(args.src, args.dst, force=args.force, size=args.size, labels=args.labels)
    print(f"wrote {args.dst}: MobileNetV2 alpha={ws.alpha}, size={ws.size[0]}x{ws.size[1]}, "
          f"classes={ws.classes}, padding={ws.padding} (from {ws.source})")
    return 0


BATCH = 16


def resolve_weights(given: str | None) -> Path:
    """--weights, else $MNV2_WEIGHTS, else the per-user cache; say how to get weights otherwise."""
    if given:
        return Path(given)
    if os.environ.get("MNV2_WEIGHTS"):
        return Path(os.environ["MNV2_WEIGHTS"])
    cached = default_weights_path()
    try:
        if cached.exists():
            return cached
    except OSError as e:
        raise EngineError(f"{cached}: cannot read the cached weights ({reason(e)})") from None
    raise EngineError(f"no weights: pass --weights FILE, set MNV2_WEIGHTS, or put an mnv2.h5 at {cached} "
                      "(mnv2 fetch-weights downloads one; or make one from a framework's file with: "
                      "mnv2 convert SRC DST)")


def default_weights_path() -> Path:
    import platformdirs
    return Path(platformdirs.user_cache_dir("mnv2engine")) / "mnv2.h5"


def cmd_predict(args) -> int:
    from .compiling import announce_compilation
    with announce_compilation():
        return _predict(args)


def _predict(args) -> int:
    if args.ray:
        return _predict_on_ray(args)
    for flag, given in (("--address", args.address), ("--out", args.out), ("--actors", args.actors)):
        if given is not None:
            raise EngineError(f"{flag} is for a Ray job: add --ray")
    from tqdm import tqdm

    from .engine import Engine

    engine = Engine.load(resolve_weights(args.weights), t=args.t, rows=args.rows, threads=args.threads,
                         quantized=_quantized(args))
    engine.check_top(args.top)  # fail before reading any image
    size = engine.input_size(args.size)
    images = expand_images(args.images)
    if not images:
        raise EngineError("no images found")
    results, failed = {}, {}
    ok = []  # (path, preprocessed image), flushed through the network BATCH at a time
    progress = tqdm(images, unit="img", disable=len(images) < 8 or args.json, file=sys.stderr)

    def flush():
        if ok:
            top = engine.classify(np.stack([x for _, x in ok]), args.top)
            results.update(zip([path for path, _ in ok], top))
            ok.clear()

    for path in progress:
        try:
            ok.append((path, engine.preprocess(path, size, crop=not args.no_crop)))
        except EngineError as e:
            failed[path] = str(e)
            print(f"mnv2: skipped {path}: {e}", file=sys.stderr)
        if len(ok) == BATCH:
            flush()
    flush()
    _print_predictions(images, results, failed, args.json)
    return 1 if failed else 0


def _predict_on_ray(args) -> int:
    """The job on Ray Data (mnv2engine/bulk.py): the weights go to the workers through
    Ray's object store, so only this machine needs the file; the images are read by the
    workers, at the paths given here."""
    if args.out is None:
        raise EngineError("--ray writes its predictions to a file: add --out FILE.jsonl or --out FILE.parquet")
    if args.json:
        raise EngineError("--json prints predictions; with --ray they go to --out FILE.jsonl, one object per image")
    try:
        from . import bulk
    except ImportError as e:
        raise EngineError(f"--ray needs Ray Data ({e}): pip install 'mnv2engine[ray]'") from None
    out = Path(args.out)
    bulk.check_output(out)
    images = expand_images(args.images)
    if not images:
        raise EngineError("no images found")
    with bulk.session(args.address):
        actors, nodes = bulk.placement(args.threads, args.actors)
        print(f"mnv2: {_count(len(images), 'image')} on {_count(actors, 'actor')} on {_count(nodes, 'node')}, "
              f"{_count(args.threads, 'thread')} each", file=sys.stderr)
        predictions = bulk.classify(images, bulk.shared_weights(resolve_weights(args.weights)), top=args.top,
                                    size=args.size, crop=not args.no_crop, t=args.t, rows=args.rows,
                                    threads=args.threads, quantized=_quantized(args), actors_per_node=args.actors)
        count, failed = bulk.write_predictions(predictions, out)
    for path, error in failed.items():
        print(f"mnv2: skipped {path}: {error}", file=sys.stderr)
    print(f"wrote {out}: {_count(count - len(failed), 'image')} classified"
          + (f", {len(failed)} of {count} could not be read" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_predictions(images, results, failed, as_json: bool):
    if as_json:
        print(json.dumps([{"image": str(p), "error": failed[p]} if p in failed else
                          {"image": str(p), "top": [{"index": i, "label": l, "probability": round(pr, 6)}
                                                    for i, l, pr in results[p]]}
                          for p in images], indent=2))
        return
    for path in images:
        if path in results:
            print(path)
            for index, label, p in results[path]:
                print(f"  {p:7.2%}  {index:5d}  {label}")
    if failed:
        print(f"{len(failed)} of {len(images)} images could not be read", file=sys.stderr)


def cmd_fetch(args) -> int:
    from .fetch import fetch_weights
    dst = Path(args.dest) if args.dest else default_weights_path()
    ws = fetch_weights(dst, url=args.url, sha256=args.sha256, labels=args.labels, force=args.force)
    print(f"wrote {dst}: MobileNetV2 alpha={ws.alpha}, classes={ws.classes} (from {args.url})")
    return 0


def cmd_summary(args) -> int:
    from .arch import Architecture
    from .summary import format_table
    if args.weights:
        from .weights import read_any
        ws = read_any(args.weights)
        arch = dataclasses.replace(ws.architecture, size=args.size or ws.size)
    else:
        arch = Architecture(alpha=args.alpha, size=args.size or 224, classes=args.classes)
    print(format_table(arch))
    return 0


def cmd_memory(args) -> int:
    from .engine import Engine
    from .report import format_memory
    if args.weights:
        from .weights import read_any
        ws = read_any(args.weights)
        if args.size:  # the recorded size is only the default
            ws.size = (args.size, args.size)
        make = lambda **kw: Engine(ws, **kw)
    else:
        make = lambda **kw: Engine.random(alpha=args.alpha, size=args.size or 224, **kw)
    from .budget import Schedule
    from .plan import build_plan
    from .report import MemoryReport
    reports = {"materialized (t=1)": make(t=1).memory_report()}
    for t in sorted({args.t, 4} - {1}):
        reports[f"sliced (t={t})"] = make(t=t).memory_report()
    rows = make(rows=True)
    alone = build_plan(rows.arch, [w.bounds for w in rows.blocks], True, 1, pipeline=False)
    reports["streamed, no pipeline"] = MemoryReport(alone, Schedule(1, 1, 1, 1), rows.max_memory)
    reports["rows=True: piped, then streamed"] = rows.memory_report()
    for t in sorted({args.t, 4} - {1}):
        reports[f"rows=True, t={t}"] = make(rows=True, t=t).memory_report()
    print(format_memory(rows.arch, reports, args.bytes))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnv2", description="MobileNetV2 inference in NumPy + Numba")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a network (seeded random if no weights) and show output and timing")
    p.add_argument("--weights", help="an mnv2.h5 (or convertible) file; default: a random network")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=20)
    _add_engine_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert a framework's weights to mnv2.h5")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--force", action="store_true", help="overwrite an existing destination")
    p.add_argument("--size", type=int, help="input size to record, where the source does not say (default 224)")
    p.add_argument("--labels", help="class names, one per line, for sources that carry none")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("predict", help="classify images (files or folders)")
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", help="mnv2.h5 file; default $MNV2_WEIGHTS, then the per-user cache")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--size", type=int, help="input size to resize images to (default: the size the weights record)")
    p.add_argument("--no-crop", action="store_true",
                   help="resize the whole image, not the centre crop the weights were evaluated with")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_engine_args(p)
    p.add_argument("--ray", action="store_true",
                   help="run on Ray Data (pip install 'mnv2engine[ray]'): one engine per actor, "
                        "--threads each; writes --out")
    p.add_argument("--address", help="with --ray: join this Ray cluster ('auto', or the head's HOST:PORT); "
                                     "default: start a local Ray for the job")
    p.add_argument("--actors", type=int, help="with --ray: actors per node (default: the node's CPUs // --threads)")
    p.add_argument("--out", help="with --ray: FILE.jsonl (one --json object per image) or FILE.parquet")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("memory", help="the paper's Table 3 and the peak memory of each mode")
    p.add_argument("--weights", help="take the architecture from this weight file")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, help="input size (default: the weights' recorded size, else 224)")
    p.add_argument("--t", type=_t_arg, default=4, help="slices for the sliced mode (default 4)")
    p.add_argument("--bytes", type=int, choices=(2, 4), default=2,
                   help="bytes per activation value: 2 as in the paper's Table 3, 4 for float32")
    p.set_defaults(func=cmd_memory)

    from .fetch import OFFICIAL_SHA256, OFFICIAL_URL
    p = sub.add_parser("fetch-weights", help="download the official Keras 1.0/224 weights into the user cache")
    p.add_argument("--url", default=OFFICIAL_URL)
    p.add_argument("--sha256", default=OFFICIAL_SHA256, help="expected digest of the downloaded file")
    p.add_argument("--labels", help="class names, one per line (the Keras file carries none)")
    p.add_argument("--dest", help="where to write mnv2.h5 (default: the per-user cache)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("summary", help="per-layer table: shapes, parameters, multiply-adds")
    p.add_argument("--weights", help="take the architecture from this weight file")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, help="input size (default: the weights' recorded size, else 224)")
    p.add_argument("--classes", type=int, default=1000)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as e:
        print(f"mnv2: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the last net: every known filesystem error is an EngineError already
        print(f"mnv2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
