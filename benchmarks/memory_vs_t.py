"""Peak activation memory and latency of MobileNetV2 vs the number of expansion slices t.

Every mode's logits are checked against a NumPy reference first (benchmarks/_check.py).
For each t (and the row pipeline, `rows=True`, alone and with t = 4): the planner's
peak, the tracemalloc peak of one real forward call, the paper's formula max over
blocks of |x| + |y| + |E|/t, and the median latency; a table on stdout and a PNG plot.
The input image is the caller's (forward reads it in place): no column counts it. The modes are timed round-robin, the
order rotated each run, so that a noisy moment of the machine hits all of them alike.

    python benchmarks/memory_vs_t.py [--alpha 1.0] [--size 224] [--runs 15] [--out benchmarks/out]
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from mnv2engine import Engine

from _check import check, network

TS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
MIB = 2 ** 20


def paper_formula(arch, t: int) -> int:
    """max over blocks of |x| + |y| + |E| / t (float32 bytes); block0's x is the image,
    the caller's, not counted (as by the planner)."""
    worst = 0
    for b in arch.blocks:
        x = 0 if b.index == 0 else b.in_size[0] * b.in_size[1] * b.cin
        y = b.out_size[0] * b.out_size[1] * b.cout
        e = b.in_size[0] * b.in_size[1] * b.hidden
        worst = max(worst, 4 * (x + y + e / t))
    return int(worst)


def traced_peak(engine: Engine, x: np.ndarray) -> int:
    engine.forward(x)  # compile, plan
    tracemalloc.start()
    engine.forward(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def interleaved_medians(engines: list[Engine], x: np.ndarray, runs: int) -> list[float]:
    times = [[] for _ in engines]
    for run in range(runs):
        for i in np.roll(np.arange(len(engines)), run):
            t0 = time.perf_counter()
            engines[i].forward(x)
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args(argv)

    modes = [(f"t={t}", dict(t=t), t) for t in TS] + [("rows", dict(rows=True), None),
                                                     ("rows,t=4", dict(rows=True, t=4), None)]
    # rows: the row pipeline (kernels/pipeline.py) for the first blocks, then row streaming
    engines = [Engine.random(alpha=args.alpha, size=args.size, **kw) for _, kw, _ in modes]
    x = np.random.default_rng(0).uniform(-1, 1, (1, *engines[0].arch.size, 3)).astype(np.float32)
    reference = network(engines[0].weights, x)
    check("NumPy float64 logits", [(label, engine.forward(x), reference) for (label, _, _), engine in zip(modes, engines)])
    traced = [traced_peak(engine, x) for engine in engines]
    latencies = interleaved_medians(engines, x, args.runs)
    rows = []
    for (label, _, t), engine, peak, latency in zip(modes, engines, traced, latencies):
        formula = paper_formula(engine.arch, t) if t else None
        rows.append((label, t, engine.memory_report().peak_bytes, peak, formula, latency))

    fastest = min(r[5] for r in rows)
    print(f"MobileNetV2 {args.alpha}/{args.size}, batch 1, float32 activations; "
          f"median of {args.runs} runs")
    print(f"{'mode':<10} {'planner MiB':>12} {'tracemalloc MiB':>16} {'|x|+|y|+|E|/t MiB':>18} "
          f"{'latency ms':>11} {'vs fastest':>11}")
    for label, t, planned, traced, formula, latency in rows:
        f = f"{formula / MIB:18.3f}" if formula else f"{'':>18}"
        print(f"{label:<10} {planned / MIB:12.3f} {traced / MIB:16.3f} {f} "
              f"{1e3 * latency:11.1f} {latency / fastest:10.2f}x")
    plot(rows, args)


def plot(rows, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sliced = [r for r in rows if r[1]]
    ts = [r[1] for r in sliced]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax.plot(ts, [r[2] / MIB for r in sliced], "o-", label="planner peak (arena + output)")
    ax.plot(ts, [r[3] / MIB for r in sliced], "x", ms=10, label="tracemalloc peak of one forward")
    ax.plot(ts, [r[4] / MIB for r in sliced], "--", label="paper: max over blocks |x| + |y| + |E|/t")
    for r, style in zip([r for r in rows if not r[1]], (":", "-.")):
        ax.axhline(r[2] / MIB, ls=style, color="gray", label=f"{r[0]}: row pipeline (planner)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("t (expansion slices per block)")
    ax.set_ylabel("peak activation memory (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"MobileNetV2 {args.alpha}/{args.size}: memory vs t")
    ax.legend(fontsize=8)
    ax2.bar([r[0] for r in rows], [1e3 * r[5] for r in rows], color="tab:blue")
    ax2.set_ylabel("median latency, batch 1 (ms)")
    ax2.set_title("latency of each mode")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory_vs_t.png"
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
