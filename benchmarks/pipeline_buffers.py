"""The row pipeline's line buffers over time: what `rows=True` holds while the stem and
the first blocks run row by row across blocks (kernels/pipeline.py).

The buffers are the engine's: `Engine.random(rows=True).plan(1)`, each with its shape,
bytes and arena offset from the planner. Time is the pipeline's own walk, replayed
here step by step with the rule of kernels/pipeline.py (`walk`): each step makes one
expansion row of one block, or one output row. The replay tells which rows each
buffer holds at each step; `tests/test_pipeline_buffers.py` checks that it makes every
row once, that no ring ever needs more rows than the planner gave it, and that the
kernel's intermediates agree with the materialized network.

Two panels, in the style of block_buffers.py:

  left   the arena map: every buffer of the pipeline where the planner put it (y, KiB),
         over the walk's steps (x); the last block's whole output fills up as its rows
         are made (solid = written); the dashed line is the peak of the forward pass
  right  the rows each buffer holds, in image rows (a row of a 56x56 tensor covers 4
         image rows): the line buffers slide down the image together, a few rows
         deep, while the stem reads the image in place

    python benchmarks/pipeline_buffers.py [--out docs/img] [--alpha 1.0] [--size 224] [--t 1]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from mnv2engine import Engine

KIB = 1024


@dataclass
class Step:
    """One step of the walk: block i makes expansion row `row` ('E') or output row `row` ('y')."""
    block: int
    kind: str
    row: int


def walk(blocks, pads, piped: int, band=None) -> list[Step]:
    """The pipeline's steps for one image (kernels/pipeline.py's loop, in Python):
    blocks the architecture's blocks, pads their depthwise paddings, band the last
    block's output rows (default: all)."""
    last = piped - 1
    oy0, oy1 = band or (0, blocks[last].out_size[0])
    e_made, out_made = [0] * piped, [0] * piped
    out_made[last] = oy0
    for i in range(last, -1, -1):
        e_made[i] = max(out_made[i] * blocks[i].stride - pads[i][0], 0)
        if i > 0:
            out_made[i - 1] = e_made[i]
    steps, i = [], last
    while out_made[last] < oy1:
        b = blocks[i]
        needed = min(out_made[i] * b.stride - pads[i][0] + 2, b.in_size[0] - 1)
        if e_made[i] <= needed:
            if i > 0 and out_made[i - 1] <= e_made[i]:
                i -= 1
                continue
            steps.append(Step(i, "E", e_made[i]))
            e_made[i] += 1
        else:
            steps.append(Step(i, "y", out_made[i]))
            out_made[i] += 1
            if i < last:
                i += 1
    return steps


def held_rows(steps: list[Step], blocks, pads, piped: int) -> dict:
    """Per block and step: the rows (lo, hi) of its expansion that its depthwise still
    needs (the E ring, or at stride 2 the rows whose sums are open) and of its output
    ring (rows made and not yet read for the last time by the next block)."""
    out = {i: {"E": [], "y": []} for i in range(piped)}
    e_made, out_made = [0] * piped, [0] * piped
    for s in steps:
        if s.kind == "E":
            e_made[s.block] += 1
        else:
            out_made[s.block] += 1
        for i, b in enumerate(blocks[:piped]):
            first = max(out_made[i] * b.stride - pads[i][0], 0)  # the next output row's window top
            out[i]["E"].append((min(first, e_made[i] - 1), e_made[i] - 1) if e_made[i] else None)
            if i < piped - 1:
                after = blocks[i + 1]
                keep = out_made[i + 1] if after.use_residual else e_made[i + 1]  # still to be read
                out[i]["y"].append((keep, out_made[i] - 1) if out_made[i] > keep else None)
            else:
                out[i]["y"].append((0, out_made[i] - 1) if out_made[i] else None)
    return out


@dataclass
class Pipeline:
    engine: Engine
    plan: object
    steps: list[Step]
    held: dict

    @property
    def blocks(self):
        return [s.block for s in self.plan.steps[:self.plan.piped]]


def gather(alpha: float = 1.0, size: int = 224, t: int = 1) -> Pipeline:
    engine = Engine.random(alpha=alpha, size=size, rows=True, t=t)
    plan = engine.plan(1)
    arch = engine.arch
    pads = [arch.pads(b.in_size, b.stride) for b in arch.blocks]
    steps = walk(arch.blocks, pads, plan.piped)
    return Pipeline(engine, plan, steps, held_rows(steps, arch.blocks, pads, plan.piped))


def table(p: Pipeline) -> str:
    lines = [f"MobileNetV2 {p.engine.arch.alpha}/{p.engine.arch.size[0]}, rows=True, batch 1, float32: "
             f"the first {p.plan.piped} blocks as the row pipeline, {len(p.steps)} steps",
             f"{'buffer':<20} {'shape':<18} {'KiB':>8} {'offset KiB':>11}"]
    for step in p.plan.steps[:p.plan.piped]:
        for buf in (step.e, step.d, step.y):
            lines.append(f"{buf.name:<20} {'x'.join(map(str, buf.shape)):<18} {buf.nbytes / KIB:8,.1f} "
                         f"{buf.offset / KIB:11,.1f}")
    live = sum(b.nbytes for s in p.plan.steps[:p.plan.piped] for b in (s.e, s.d, s.y))
    lines.append(f"pipeline buffers {live / KIB:,.1f} KiB live at once; arena {p.plan.arena_bytes / KIB:,.1f} KiB, "
                 f"peak with the logits {p.plan.peak_bytes / KIB:,.1f} KiB = {p.plan.peak_bytes / 2**20:.3f} MiB "
                 f"(the input, {p.plan.input.nbytes / KIB:,.0f} KiB, is the caller's)")
    return "\n".join(lines)


COLORS = ["#4C72B0", "#DD8452", "#55A868", "#8172B3", "#C44E52", "#937860", "#DA8BC3", "#8C8C8C"]
ROLE_ALPHA = {"E": 0.9, "D": 0.55, "y": 0.75}


def _dims(shape) -> str:
    return "\u00d7".join(map(str, shape[-3:]))


def plot(p: Pipeline, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    n = len(p.steps)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 8), gridspec_kw=dict(width_ratios=[1.1, 1], wspace=0.18))
    top, labels = 0, []
    for k, step in enumerate(p.plan.steps[:p.plan.piped]):
        color = COLORS[k % len(COLORS)]
        for role, buf in (("E", step.e), ("D", step.d), ("y", step.y)):
            y0, h = buf.offset / KIB, buf.nbytes / KIB
            top = max(top, y0 + h)
            whole = buf.whole
            ax.add_patch(Rectangle((0, y0), n, h, facecolor=color, alpha=0.25 if whole else ROLE_ALPHA[role], lw=0))
            if whole:  # the last block's output: solid = rows written so far
                rows = step.block.out_size[0]
                made = [(r[1] + 1) if r else 0 for r in p.held[k]["y"]]
                xs = list(range(n + 1))
                ax.fill_between(xs, y0, [y0 + h * made[min(j, n - 1)] / rows for j in xs], step="post",
                                color=color, alpha=0.8, lw=0)
            ax.add_patch(Rectangle((0, y0), n, h, facecolor="none", edgecolor="black", lw=0.6))
            label = {"E": "E rows" if step.block.stride == 2 else "E ring",
                     "D": "D sums" if step.block.stride == 2 else "D row",
                     "y": "output" if whole else "output rows"}[role]
            text = f"{step.block.name} {label} {_dims(buf.shape)}, {h:,.1f} KiB"
            if h >= 20:
                ax.text(n / 2, y0 + h / 2, text, fontsize=8.5, ha="center", va="center", color="white",
                        weight="bold")
            else:
                labels.append((y0 + h / 2, text, color))
    ax.axhline(p.plan.arena_bytes / KIB, color="crimson", ls="--", lw=1.2)
    ax.text(n * 0.02, p.plan.arena_bytes / KIB * 1.01,
            f"arena of the whole forward pass: {p.plan.arena_bytes / KIB:,.0f} KiB", color="crimson", fontsize=9,
            va="bottom")
    ymax = max(top, p.plan.arena_bytes / KIB) * 1.08
    # the small buffers' labels in a column beside the map, spread out, each with a line to its buffer
    labels.sort()
    room = ymax * 0.035
    at = [ymax * 0.93 - room * (len(labels) - 1 - j) for j in range(len(labels))]
    for (y, text, color), yt in zip(labels, at):
        ax.annotate(text, xy=(n, y), xytext=(n * 1.04, yt), fontsize=7.5, color=color, weight="bold",
                    va="center", arrowprops=dict(arrowstyle="-", color=color, lw=0.6))
    ax.set_xlim(0, n * 1.45)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= n])
    ax.set_ylim(0, ymax)
    ax.set_xlabel(f"step of the pipeline's walk, 1..{n} (one expansion or output row each)  \u2192 time")
    ax.set_ylabel("arena offset (KiB)\na rectangle's height is the buffer's size")
    ax.set_title("where the planner puts the pipeline's buffers", fontsize=11)

    # a zoom on a stretch of the walk in the middle of the image: two output rows of the last block
    H = p.engine.arch.size[0]
    last_rows = [j for j, st in enumerate(p.steps) if st.block == p.plan.piped - 1 and st.kind == "y"]
    mid = len(last_rows) // 2
    j0, j1 = last_rows[mid - 2] + 1, last_rows[mid] + 1
    lo_row, hi_row = H, 0
    for k, step in enumerate(p.plan.steps[:p.plan.piped]):
        b, color = step.block, COLORS[k % len(COLORS)]
        scale_e = H / b.in_size[0]  # image rows per row of the block's expansion
        scale_y = H / b.out_size[0]
        kinds = [("E", p.held[k]["E"], scale_e, 0.9)]
        if k < p.plan.piped - 1:
            kinds.append(("y", p.held[k]["y"], scale_y, 0.35))
        for role, spans, scale, alpha in kinds:
            for j in range(j0, j1):
                if spans[j] is None:
                    continue
                lo, hi = spans[j]
                w = 0.5 if role == "E" else 1.0
                x0 = j + (0.25 if role == "E" else 0)
                ax2.add_patch(Rectangle((x0, lo * scale), w, (hi - lo + 1) * scale,
                                        facecolor=color, alpha=alpha, lw=0.3, edgecolor=color))
                lo_row, hi_row = min(lo_row, lo * scale), max(hi_row, (hi + 1) * scale)
        for j in range(j0, j1):
            st = p.steps[j]
            if st.block == k:
                scale = scale_e if st.kind == "E" else scale_y
                ax2.plot([j + 0.5], [(st.row + 0.5) * scale], marker="o" if st.kind == "y" else "x", color="black",
                         ms=3.5)
    ax2.set_xlim(j0, j1)
    ax2.set_ylim(hi_row + 2, lo_row - 2)
    ax2.set_xlabel(f"steps {j0 + 1}..{j1} of the walk (two output rows of {p.plan.steps[p.plan.piped - 1].block.name})"
                   "  \u2192 time")
    ax2.set_ylabel("image row (each tensor's rows scaled to the image's)")
    ax2.set_title("zoom: the rows each block holds. Dark: expansion rows its depthwise still needs;\n"
                  "pale: output rows not yet read for the last time; x / o: the expansion / output row made",
                  fontsize=10)
    handles = [Patch(facecolor=COLORS[k % len(COLORS)], label=f"{s.block.name}: {s.block.in_size[0]}\u00b2\u00d7"
                     f"{s.block.cin if k else 3} \u2192 {s.block.out_size[0]}\u00b2\u00d7{s.block.cout}"
                     + (" (stem + block 0)" if k == 0 else ""))
               for k, s in enumerate(p.plan.steps[:p.plan.piped])]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False)
    a = p.engine.arch
    fig.suptitle(f"Beyond the paper: the row pipeline of MobileNetV2 {a.alpha}/{a.size[0]} (rows=True, batch 1, "
                 f"float32)\nthe stem and blocks 0-{p.plan.piped - 1} hand every row on at once: no tensor of "
                 f"theirs exists whole but block {p.plan.piped - 1}'s output; peak of the forward pass "
                 f"{p.plan.peak_bytes / 2**20:.2f} MiB (arena + logits);\nthe {p.plan.input.nbytes / KIB:,.0f} KiB "
                 f"input image is read in place", fontsize=12)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.82, bottom=0.12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--t", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args(argv)
    p = gather(args.alpha, args.size, args.t)
    print(table(p))
    path = args.out / "pipeline_buffers.png"
    plot(p, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
