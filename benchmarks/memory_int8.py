"""The memory argument at 8 bits: each integer mode's working set on the int8 MobileNetV2.

The shared int8 model (tf2_mobilenet_v2_1.0_224_ptq.tflite, from ../shared/data or
$MNV2_TEST_DATA) runs in integer in each mode; its logits are first checked against
LiteRT's reference kernels (equal). Per mode: the planner's arena (every activation
buffer in its own bytes: int8 activations, int32 partial sums), the tracemalloc peak of
one forward call, and the largest tensor held whole. The input image is int8 and read in
place, so, as in MCUNetV2's count, it is excluded. Beside them: the paper's Table 3 (16-bit:
400K in the arXiv text, 200K in the other version) and MCUNetV2's int8 MobileNetV2
(arXiv 2110.15352, Table 1: 1372 kB layer by layer, 172 kB patch by patch). A table on
stdout and a bar chart, memory_int8.png.

    python benchmarks/memory_int8.py [--out benchmarks/out]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from mnv2engine import Engine, EngineError

from memory_vs_t import traced_peak

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tf2_mobilenet_v2_1.0_224_ptq.tflite"
MODES = (("materialized (t=1)", dict(t=1)), ("sliced (t=4)", dict(t=4)),
         ("rows=True", dict(rows=True)), ("rows=True, t=4", dict(rows=True, t=4)))
REFERENCES = (("paper, Table 3 (16-bit, arXiv)", 400_000), ("paper, Table 3 (16-bit, other version)", 200_000),
              ("MCUNetV2 int8, layer by layer", 1_372_000), ("MCUNetV2 int8, patch by patch", 172_000))


def litert_logits(path: Path, x_uint8: np.ndarray) -> np.ndarray:
    from ai_edge_litert import interpreter as litert
    it = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x_uint8)
    it.invoke()
    return it


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args(argv)
    data = Path(os.environ.get("MNV2_TEST_DATA", ROOT.parent / "shared" / "data"))
    path = data / "models" / MODEL
    if not path.is_file():
        raise SystemExit(f"{path} not found: set MNV2_TEST_DATA to the shared data folder")
    x_uint8 = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    x = (x_uint8.astype(np.int16) - 128).astype(np.int8)  # the kernels' int8, read in place
    rows = []
    reference = None
    for label, kw in MODES:
        try:
            engine = Engine.load(path, quantized=True, **kw)
        except EngineError as e:
            print(f"{label}: not run ({e})")
            continue
        if reference is None:
            reference = engine.forward(x)
            it = litert_logits(path, x_uint8)
            out = it.get_output_details()[0]
            got = engine.classify(x, top=engine.arch.classes)[0]
            want = (it.get_tensor(out["index"])[0].astype(np.float64) - out["quantization"][1]) * out["quantization"][0]
            mine = np.zeros_like(want)
            for i, _, p in got:
                mine[i] = p
            if np.abs(mine - want).max() > 1 / 256 + 1e-9:
                raise SystemExit("the integer engine's probabilities are not LiteRT's reference kernels': not measured")
            print("check vs LiteRT's reference kernels: probabilities within 1/256: OK")
        if not np.array_equal(engine.forward(x), reference):
            raise SystemExit(f"{label}: logits differ from the materialized evaluation's: not measured")
        report = engine.memory_report(x=x)
        name, nbytes = report.largest_whole
        rows.append((label, report.arena_bytes, traced_peak(engine, x), name, nbytes))
    print(f"\nMobileNetV2 1.0/224 int8 ({MODEL}), batch 1, the input image (int8, read in place) excluded")
    print(f"{'mode':<22} {'arena (planner)':>16} {'tracemalloc peak':>17} {'kB':>7}  largest whole tensor")
    for label, arena, peak, name, nbytes in rows:
        print(f"{label:<22} {arena:>16,} {peak:>17,} {peak / 1000:>7.0f}  {name} ({nbytes:,} bytes)")
    for label, nbytes in REFERENCES:
        print(f"{label:<40} {nbytes / 1000:>7.0f} kB")
    plot(rows, args)


def plot(rows, args):
    try:
        import matplotlib
    except ImportError:
        print("plot: skipped, matplotlib is not installed (pip install matplotlib, or the [plots] extra)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    labels = [r[0] for r in rows]
    kb = [r[2] / 1000 for r in rows]
    bars = ax.bar(labels, kb, color="tab:blue")
    ax.bar_label(bars, fmt="%.0f kB", fontsize=9, padding=2)
    styles = (("--", "tab:gray"), (":", "tab:gray"), ("-.", "tab:red"), ("-", "tab:red"))
    for (label, nbytes), (style, color) in zip(REFERENCES, styles):
        ax.axhline(nbytes / 1000, color=color, linestyle=style, linewidth=1.2, label=f"{label}: {nbytes / 1000:.0f} kB")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("peak activation memory (kB, tracemalloc, one forward)")
    ax.set_title("MobileNetV2 1.0/224 in int8, batch 1, each mode's working set (input image excluded)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory_int8.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
