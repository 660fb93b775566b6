"""Which buffers are live while ONE inverted residual runs, in the three evaluations.

Block 1 of MobileNetV2 1.0/224 by default: x 112x112x16 -> expand to 96 channels ->
3x3 depthwise, stride 2 -> y 56x56x24. For each evaluation the script asks the engine's
own memory planner (`Engine.random(t=..., rows=...).plan(1).steps[block]`) for the four
buffers of the block -- x (input), E (expansion scratch), D (depthwise scratch), y (output)
-- with their shapes, bytes, arena offsets and [first, last] phase lifetimes, and draws
an "arena map" per evaluation:

  x axis   time inside the block, in the steps the kernel takes (kernels/block.py):
             materialized (t=1)   expand, depthwise, project: the planner's three phases
             sliced (t=4)         slice 1..t, each one expand + depthwise + project
             row-streamed         output row 1..Ho, each one (up to) 2 expansion rows,
                                  one depthwise row, one projected row
  y axis   arena byte offset (KiB); a rectangle is a buffer, where the planner put it
           and for as long as the planner keeps it

Nothing is drawn by hand: sizes and offsets come from the plan, and the panel title's
peak is the planner's largest sum of simultaneously live buffers during the block (the
figure `engine.memory_report()` prints for the block). The row-streamed panel is one
block streamed on its own, with x and y whole (`rows_plan`); `rows=True` now runs block
1 inside the row pipeline instead (benchmarks/pipeline_buffers.py draws that). A table
on stdout, a PNG (`block_buffers.png`) in --out.

    python benchmarks/block_buffers.py [--out docs/img] [--block 1] [--t 4] [--alpha 1.0] [--size 224]

The labels are laid out for the default, block 1 at t = 4; other blocks and t work, but
their labels may crowd.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnv2engine import Engine
from mnv2engine.plan import PHASES_PER_BLOCK, layout_plan

KIB = 1024
ROLES = ("x", "E", "D", "y")  # BlockStep attributes: x, e, d, y
WHAT = {"x": "input x", "E": "expansion E", "D": "depthwise D", "y": "output y"}


@dataclass
class Box:
    """One planner buffer of the block."""
    role: str                # x, E, D or y
    name: str                # the planner's name, e.g. "block1/expanded"
    shape: tuple[int, ...]
    nbytes: int
    offset: int              # byte offset in the arena
    first: int               # planner phases, inclusive
    last: int
    steps: tuple[int, int]   # the drawing's steps it spans, inclusive


@dataclass
class ModeBuffers:
    """One evaluation of the block, as the planner lays it out."""
    label: str               # "materialized (t=1)", ...
    kind: str                # "materialized", "sliced" or "rows"
    engine_kwargs: dict
    block: object            # mnv2engine.arch.Block
    bounds: np.ndarray       # slice edges (t + 1)
    pads: tuple[int, int, int, int]
    boxes: dict              # role -> Box
    steps: list[str]         # one label per drawn step (the x axis)
    phase_live_bytes: dict   # planner phase -> sum of bytes of every plan buffer live then
    peak: int                # max of phase_live_bytes: the block's peak
    others: list             # other plan buffers live during the block (none for block 1)

    @property
    def t(self) -> int:
        return len(self.bounds) - 1

    def live_at_step(self, step: int) -> list[Box]:
        return [b for b in self.boxes.values() if b.steps[0] <= step <= b.steps[1]]

    def step_live_bytes(self, step: int) -> int:
        return sum(b.nbytes for b in self.live_at_step(step))

    def expansion_rows(self, oy: int) -> tuple[int, int]:
        """Rows mode: the expansion rows the 3-row line buffer holds when output row oy is
        filtered (the rule of kernels/block.py `_stream`)."""
        He = self.block.in_size[0]
        needed = min(oy * self.block.stride - self.pads[0] + 2, He - 1)
        return max(needed - 2, 0), needed


def gather(block: int = 1, t: int = 4, alpha: float = 1.0, size: int = 224) -> list[ModeBuffers]:
    """The block's buffers in the materialized (t=1), sliced (t) and row-streamed evaluations,
    from the engine's planner (batch 1)."""
    modes = [("materialized (t=1)", "materialized", dict(t=1)),
             (f"sliced (t={t})", "sliced", dict(t=t)),
             ("row-streamed (t=1)", "rows", dict(t=1, rows=True))]
    out = []
    for label, kind, kw in modes:
        engine = Engine.random(alpha=alpha, size=size, **kw)
        plan = rows_plan(engine) if kind == "rows" else engine.plan(1)
        step = plan.steps[block]
        b = step.block
        p0 = PHASES_PER_BLOCK * b.index
        phases = range(p0, p0 + PHASES_PER_BLOCK)
        if kind == "materialized":
            labels = ["expand", "depthwise", "project"]
            to_steps = lambda first, last: (max(first, p0) - p0, min(last, p0 + 2) - p0)
        else:
            # a slice (or an output row) runs all three phases before the next begins, and the
            # planner keeps x, E, D and y for the whole block: live at every step
            n = len(step.bounds) - 1 if kind == "sliced" else b.out_size[0]
            labels = ([f"slice {i + 1}" for i in range(n)] if kind == "sliced"
                      else [f"row {i + 1}" for i in range(n)])
            to_steps = lambda first, last, n=n: ((0, n - 1) if first <= p0 + 2 and last >= p0
                                                 else None)
        boxes = {}
        for role, buf in zip(ROLES, (step.x, step.e, step.d, step.y)):
            boxes[role] = Box(role, buf.name, tuple(buf.shape), buf.nbytes, buf.offset,
                              buf.first, buf.last, to_steps(buf.first, buf.last))
        mine = {id(buf) for buf in (step.x, step.e, step.d, step.y)}
        live = {p: sum(buf.nbytes for buf in plan.buffers if buf.live_at(p)) for p in phases}
        others = [buf for buf in plan.buffers
                  if id(buf) not in mine and any(buf.live_at(p) for p in phases)]
        out.append(ModeBuffers(label, kind, kw, b, step.bounds,
                               engine.arch.pads(b.in_size, b.stride), boxes, labels, live,
                               max(live.values()), others))
    return out


def rows_plan(engine: Engine):
    """The plan of `engine` (rows=True) with every block row-streamed on its own and no
    row pipeline: the single-block evaluation this figure shows (batch 1)."""
    arch = engine.arch
    return layout_plan(arch, [w.bounds for w in engine.blocks], [True] * len(arch.blocks),
                       arch.blocks[-1].out_size[1], 1)


def table(modes: list[ModeBuffers]) -> str:
    b = modes[0].block
    lines = [f"{b.name}: {b.in_size[0]}x{b.in_size[1]}x{b.cin} -> expand {b.hidden} -> depthwise "
             f"stride {b.stride} -> {b.out_size[0]}x{b.out_size[1]}x{b.cout}, float32, batch 1",
             f"{'mode':<20} {'buffer':<6} {'shape':<18} {'KiB':>9} {'offset KiB':>11} {'phases':>8}"]
    for m in modes:
        for box in m.boxes.values():
            lines.append(f"{m.label:<20} {box.role:<6} {'x'.join(map(str, box.shape)):<18} "
                         f"{box.nbytes / KIB:9,.1f} {box.offset / KIB:11,.1f} "
                         f"{f'{box.first}-{box.last}':>8}")
        per_phase = ", ".join(f"{p}: {v / KIB:,.1f}" for p, v in m.phase_live_bytes.items())
        lines.append(f"{'':<20} live KiB per phase ({per_phase}); peak {m.peak / KIB:,.1f} KiB "
                     f"= {m.peak:,} bytes")
        for buf in m.others:
            lines.append(f"{'':<20} also live: {buf.name} {list(buf.shape)} {buf.nbytes / KIB:,.1f} KiB")
    return "\n".join(lines)


COLORS = {"x": "#4C72B0", "E": "#DD8452", "D": "#55A868", "y": "#8172B3"}
PALE = 0.3  # alpha of bytes that are reserved but hold nothing useful (yet, or any more)


def _dims(shape) -> str:
    return "\u00d7".join(str(s) for s in (shape[1:] if len(shape) == 4 else shape))


def _label(m: ModeBuffers, box: Box) -> str:
    kib = f"{box.nbytes / KIB:,.0f} KiB"
    if m.kind == "sliced" and box.role in ("E", "D"):
        return f"{box.role}: one slice, {_dims(box.shape)}, {kib}"
    if m.kind == "rows" and box.role == "E":
        return f"E: 3-row line buffer, {_dims(box.shape)}, {kib}"
    if m.kind == "rows" and box.role == "D":
        return f"D: one row, {_dims(box.shape)}, {kib}"
    return f"{box.role}  {_dims(box.shape)}\n{kib}"


def _fill(m: ModeBuffers, box: Box, step: int) -> float:
    """How much of the buffer holds useful data at a step, 0..1 (drawn solid; the rest pale):
    y's rows written so far (rows) or slices summed so far (sliced); x's rows still to be read
    (rows). Everything else is fully in use while live."""
    if m.kind == "rows" and box.role == "y":
        return (step + 1) / box.shape[1]
    if m.kind == "rows" and box.role == "x":
        done = m.expansion_rows(step)[0]            # x rows below the line buffer: read for good
        if m.block.use_residual:
            done = min(done, step)                  # ... unless the residual still needs them
        return 1 - done / box.shape[1]
    if m.kind == "sliced" and box.role == "y":
        return 1.0                                  # every byte is written by slice 1
    return 1.0


def _draw_boxes(ax, m: ModeBuffers, Rectangle, inner_labels=True, roles=ROLES):
    """The buffers of one mode; returns the (box, label) pairs too small to label inside."""
    ymax = ax.get_ylim()[1]
    outside = []
    for role in roles:
        box = m.boxes[role]
        s0, s1 = box.steps
        y0, h = box.offset / KIB, box.nbytes / KIB
        partial = (m.kind == "rows" and role in ("x", "y"))
        ax.add_patch(Rectangle((s0, y0), s1 + 1 - s0, h, facecolor=COLORS[role],
                               alpha=PALE if partial else 0.9, lw=0))
        if partial:
            for k in range(s0, s1 + 1):
                f = _fill(m, box, k)
                # x is read from the top rows down: the rows still needed are the upper part
                base = y0 + h * (1 - f) if role == "x" else y0
                ax.add_patch(Rectangle((k, base), 1, h * f, facecolor=COLORS[role], alpha=0.9, lw=0))
        if m.kind == "sliced" and role == "y":
            for k in range(s0, s1 + 1):  # the partial sum deepens slice by slice
                ax.add_patch(Rectangle((k, y0), 1, h, facecolor="white", alpha=0.55 * (1 - (k + 1) / m.t),
                                       lw=0))
        ax.add_patch(Rectangle((s0, y0), s1 + 1 - s0, h, facecolor="none", edgecolor="black", lw=0.8))
        if m.kind == "sliced" and role in ("E", "D", "y"):
            for k in range(1, m.t):
                ax.plot([k, k], [y0, y0 + h], color="black", lw=0.6, ls=":")
        if not inner_labels or m.kind == "rows":
            continue  # rows: _annotate_rows labels x here and the others in its zoom
        text = _label(m, box)
        if role == "y" and m.kind != "rows" or h < 0.04 * ymax:
            outside.append((box, text))
        else:
            ax.text((s0 + s1 + 1) / 2, y0 + h * (0.6 if m.kind == "sliced" and role == "E" else 0.5),
                    text if h >= 0.07 * ymax else text.replace("\n", ", "),
                    ha="center", va="center", fontsize=9, color="white", weight="bold")
    return outside


def plot(modes: list[ModeBuffers], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    top = max(box.offset + box.nbytes for m in modes for box in m.boxes.values()) / KIB
    ymax = top * 1.1
    fig, axes = plt.subplots(1, 3, figsize=(16, 8), sharey=True, gridspec_kw=dict(wspace=0.06))
    b = modes[0].block
    for ax, m in zip(axes, modes):
        n = len(m.steps)
        ax.set_xlim(0, n)
        ax.set_ylim(0, ymax)
        outside = _draw_boxes(ax, m, Rectangle)
        ax.axhline(m.peak / KIB, color="crimson", ls="--", lw=1.2)
        if m.kind == "materialized":
            _annotate_materialized(ax, m, outside)
        elif m.kind == "sliced":
            _annotate_sliced(ax, m, outside)
        else:
            _annotate_rows(ax, m, outside, Rectangle)
        if m.kind == "rows":
            ticks = [0] + list(range(7, n, 8)) + ([n - 1] if (n - 1) % 8 != 7 else [])
            ax.set_xticks([i + 0.5 for i in ticks], [str(i + 1) for i in ticks])
            ax.set_xlabel(f"output row being produced, 1..{n}  \u2192 time")
        else:
            ax.set_xticks([i + 0.5 for i in range(n)], m.steps)
            ax.set_xlabel("the whole tensor, phase by phase  \u2192 time" if m.kind == "materialized"
                          else f"channel slice: expand, filter, project {b.hidden // m.t} of "
                               f"{b.hidden} channels  \u2192 time")
        ax.tick_params(axis="x", length=0)
        ax.set_title(f"{m.label}\npeak {m.peak / KIB:,.0f} KiB  ({m.peak:,} bytes)", fontsize=11)
    axes[0].set_ylabel("arena offset (KiB)\na rectangle's height is the buffer's size")
    handles = [Patch(facecolor=COLORS[r], alpha=0.9, edgecolor="black", label=WHAT[r]) for r in ROLES]
    handles.append(Patch(facecolor=COLORS["y"], alpha=PALE, edgecolor="black",
                         label="pale: held but not (yet, or any more) in use"))
    handles.append(Line2D([], [], color="crimson", ls="--", lw=1.2,
                          label="the block's peak: most bytes live at once"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=10, frameon=False)
    fig.suptitle(f"One inverted residual, three ways: {b.name} of MobileNetV2, batch 1, float32 "
                 f"(x {b.in_size[0]}\u00d7{b.in_size[1]}\u00d7{b.cin} \u2192 expand to {b.hidden} "
                 f"\u2192 3\u00d73 depthwise, stride {b.stride} \u2192 y {b.out_size[0]}\u00d7"
                 f"{b.out_size[1]}\u00d7{b.cout})\nEvery buffer where the engine's memory planner "
                 f"puts it in the arena, for as long as the planner keeps it", fontsize=12)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.86, bottom=0.13)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _room(m: ModeBuffers, box: Box, ymax: float, above: bool) -> float:
    """Free KiB above (or below) a box, over its steps, up to the next box or the axis."""
    lo, hi = box.offset / KIB, (box.offset + box.nbytes) / KIB
    edges = [ymax] if above else [0.0]
    for other in m.boxes.values():
        if other is box or other.steps[1] < box.steps[0] or other.steps[0] > box.steps[1]:
            continue
        o_lo, o_hi = other.offset / KIB, (other.offset + other.nbytes) / KIB
        if above and o_lo >= hi:
            edges.append(o_lo)
        elif not above and o_hi <= lo:
            edges.append(o_hi)
    return (min(edges) - hi) if above else (lo - max(edges))


def _annotate_materialized(ax, m, outside):
    ymax = ax.get_ylim()[1]
    for box, text in outside:  # y: small; its label in free space next to it
        s0, s1 = box.steps
        below = _room(m, box, ymax, above=False) >= 0.08 * ymax
        ax.text((s0 + s1 + 1) / 2, (box.offset if below else box.offset + box.nbytes) / KIB
                + (-1 if below else 1) * ymax * 0.01, text, ha="center",
                va="top" if below else "bottom", fontsize=9, color=COLORS[box.role], weight="bold")
    e, x, d, y = (m.boxes[r] for r in "ExDy")
    notes = []
    if d.offset == x.offset:
        notes.append("D reuses x's bytes")
    if e.offset <= y.offset < e.offset + e.nbytes:
        notes.append("y reuses E's bytes")
    if notes:
        ax.text(2.5, ymax * 0.27, "the planner:\n" + "\n".join(notes), ha="center", va="center",
                fontsize=9, style="italic")


def _annotate_sliced(ax, m, outside):
    ymax = ax.get_ylim()[1]
    e, y = m.boxes["E"], m.boxes["y"]
    for k in range(m.t):
        c0, c1 = m.bounds[k], m.bounds[k + 1]
        ax.text(k + 0.5, e.offset / KIB + e.nbytes / KIB * 0.2, f"channels\n{c0}\u2013{c1 - 1}",
                ha="center", va="center", fontsize=8, color="white")
        ax.text(k + 0.5, (y.offset + y.nbytes / 2) / KIB, f"\u03a3 {k + 1}/{m.t}", ha="center",
                va="center", fontsize=8, color="white", weight="bold")
    for box, text in outside:  # y: its label just above it (or below, if no room)
        above = _room(m, box, ymax, above=True) >= 0.1 * ymax
        ax.text(0.05, (box.offset + box.nbytes) / KIB + ymax * 0.02 if above
                else box.offset / KIB - ymax * 0.02,
                text.replace("\n", ", ") + ": after slice i it holds\n"
                f"the sum of the first i of the {m.t} projected slices (\u03a3 i/{m.t})", fontsize=9,
                color=COLORS[box.role], weight="bold", va="bottom" if above else "top")


def _annotate_rows(ax, m, outside, Rectangle):
    n = len(m.steps)
    # a zoom on the small buffers: offsets from the top of x to the top of the stack
    lo = min(bx.offset for bx in m.boxes.values() if bx.role != "x") / KIB
    hi = max(bx.offset + bx.nbytes for bx in m.boxes.values()) / KIB
    pad = (hi - lo) * 0.06
    ins = ax.inset_axes([0.06, 0.36, 0.9, 0.44])
    ins.set_xlim(0, n)
    ins.set_ylim(lo - pad, hi + pad)
    _draw_boxes(ins, m, Rectangle, inner_labels=False, roles=("E", "D", "y"))
    e = m.boxes["E"]
    row = e.nbytes / KIB / 3
    for k in (1, 2):
        ins.plot([0, n], [e.offset / KIB + k * row] * 2, color="black", lw=0.5, ls=":")
    for role in ("E", "D", "y"):
        box = m.boxes[role]
        y0, h = box.offset / KIB, box.nbytes / KIB
        text = _label(m, box).replace("\n", ", ")
        if role == "y":
            text += ": solid = rows written so far"
        if h > (hi - lo) * 0.2:
            ins.text(n * 0.5, y0 + h / 2, text, ha="center", va="center", fontsize=8.5,
                     color="black" if role == "y" else "white", weight="bold")
        else:
            k = sum(1 for r in ("E", "D")[:("E", "D").index(role)]
                    if m.boxes[r].nbytes / KIB <= (hi - lo) * 0.2) if role in ("E", "D") else 0
            ins.annotate(text, xy=(n * (0.35 + 0.1 * k), y0 + h / 2),
                         xytext=(0.02, 1.06 + 0.1 * k), textcoords="axes fraction",
                         fontsize=8.5, color=COLORS[role], weight="bold", va="bottom",
                         arrowprops=dict(arrowstyle="->", color=COLORS[role], lw=1.2))
    ins.set_xticks([])
    ins.tick_params(labelsize=8)
    ax.indicate_inset_zoom(ins, edgecolor="gray")
    x = m.boxes["x"]
    ax.text(n * 0.03, (x.offset + x.nbytes * 0.62) / KIB,
            _label(m, x).replace("\n", ", ") + "\nsolid = rows still to be read", ha="left",
            va="center", fontsize=9, color="white", weight="bold")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--t", type=int, default=4, help="slices of the sliced evaluation")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args(argv)
    modes = gather(args.block, args.t, args.alpha, args.size)
    print(table(modes))
    path = args.out / "block_buffers.png"
    plot(modes, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
