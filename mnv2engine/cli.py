"""The `mnv2` command: demo, convert, predict."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .errors import EngineError


def _t_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"t must be an integer number of slices, got {text!r}") from None


def _add_engine_args(p):
    p.add_argument("--t", type=_t_arg, default=1, help="expansion slices per block (1 = materialized)")
    p.add_argument("--rows", action="store_true", help="row-streamed blocks (lowest memory)")


def cmd_demo(args) -> int:
    from .engine import Engine
    t0 = time.perf_counter()
    if args.weights:
        engine = Engine.load(args.weights, t=args.t, rows=args.rows)
        what = args.weights
    else:
        engine = Engine.random(alpha=args.alpha, size=args.size, t=args.t, rows=args.rows)
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


def cmd_predict(args) -> int:
    from .engine import Engine
    if not args.weights:
        raise EngineError("no weights: pass --weights FILE (convert a framework's file with mnv2 convert)")
    engine = Engine.load(args.weights, t=args.t, rows=args.rows)
    results = engine.predict(list(args.images), top=args.top)
    if args.json:
        print(json.dumps([{"image": str(img), "top": [{"index": i, "label": l, "probability": p}
                                                        for i, l, p in res]}
                          for img, res in zip(args.images, results)], indent=2))
        return 0
    for img, res in zip(args.images, results):
        print(img)
        for index, label, p in res:
            print(f"  {p:7.4f}  {index:5d}  {label}")
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

    p = sub.add_parser("predict", help="classify images")
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", required=False)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    _add_engine_args(p)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as e:
        print(f"mnv2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
