"""The execution plan: which kernel runs when, on which arena buffers, for one batch size.

A plan is built for (architecture at one input size, slices per block, rows mode, batch)
and holds no arrays but weights, so one Engine can keep a plan per (batch, input size,
threads) and allocate a fresh arena for every forward call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from .arch import Architecture, Block
from .errors import EngineError
from .kernels.geometry import last_row_needed
from .memory import Buffer, place

PHASES_PER_BLOCK = 3  # expand, depthwise, project


def slice_bounds(hidden: int, t: int, lanes: int = 1) -> np.ndarray:
    """The edges of the channel slices: t near-equal ones, the paper's n / t (sizes
    differ by at most one), or, with `lanes` > 1 where `hidden` is a multiple of it, on
    multiples of `lanes`, as near-equal as that allows, and never narrower than `lanes`:
    min(t, hidden / lanes) slices.

    Engine(rows=True) asks for 16 (one vector): its slices feed row-sized GEMMs, where a
    slice of 24 or 36 channels would run vectors part empty on every row, and a wider
    slice costs only one more row buffer (rows with t = 4: 1.10x the time of t = 1
    instead of 1.19x, on AVX2). Without rows a slice of E is whole, and a wider slice
    would cost its whole share of memory: there, n / t."""
    if lanes > 1 and hidden % lanes == 0:
        units = hidden // lanes
        t = min(t, units)
        return np.array([lanes * (units * i // t) for i in range(t + 1)], np.int64)
    return np.array([(i * hidden) // t for i in range(t + 1)], np.int64)


def resolve_t(arch: Architecture, t) -> list[int]:
    """Slices per block from None (= 1), an int for every block, or a per-block list."""
    n = len(arch.blocks)
    if t is None:
        t = 1
    if isinstance(t, (list, tuple)):
        if len(t) != n:
            raise EngineError(f"t as a list needs one entry per block ({n}), got {len(t)}")
        ts = list(t)
    else:
        ts = [t] * n
    for block, tb in zip(arch.blocks, ts):
        if isinstance(tb, bool) or not isinstance(tb, (int, np.integer)):
            raise EngineError(f"t must be a positive integer (number of channel slices), got {tb!r}")
        if tb < 1:
            raise EngineError(f"t must be >= 1 (1 = materialized), got {tb}")
        if tb > block.hidden:
            raise EngineError(f"t={tb} is more slices than {block.name}'s expansion has channels "
                              f"({block.hidden}); use a per-block list to set it block by block")
    return [int(tb) for tb in ts]


@dataclass
class BlockStep:
    block: Block
    bounds: np.ndarray
    mode: str   # how the block runs: one of kernels/modes.py's NAMES
    x: Buffer   # the input; a ring of rows in the pipeline; block 0's is the caller's image
    y: Buffer   # the output; a ring of rows in the pipeline but for its last block
    e: Buffer   # expansion scratch: whole E, one slice of it, or a 3-row line buffer
    d: Buffer   # depthwise scratch: whole D, one slice, or one row
    sums: Buffer | None = None  # in integer, a sliced block's int32 projection sums (4 bytes each)

    @property
    def piped(self) -> bool:
        return self.mode == "piped"

    @property
    def streamed(self) -> bool:
        return self.mode == "streamed"


@dataclass
class Plan:
    batch: int
    steps: list[BlockStep]
    head_x: Buffer
    head_scratch: Buffer
    pooled: Buffer
    input: Buffer            # the caller's image: read in place, not in the arena
    arena_bytes: int
    output_shape: tuple[int, int]
    piped: int = 0           # the first `piped` blocks run as the row pipeline

    @property
    def buffers(self) -> list[Buffer]:
        """The arena's buffers (the input is the caller's), each once: the integer
        pipeline's blocks share one depthwise row and one row of sums."""
        out, seen = [], set()
        for s in self.steps:
            for b in (s.e, s.d, s.y, s.sums):
                if b is not None and id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
        return out + [self.head_scratch, self.pooled]

    @property
    def output_bytes(self) -> int:
        return int(np.prod(self.output_shape)) * 4

    @property
    def peak_bytes(self) -> int:
        """Activation memory of one forward: the arena plus the returned output."""
        return self.arena_bytes + self.output_bytes

    @property
    def largest_whole(self) -> Buffer:
        """The largest tensor the plan holds whole: the measure of the paper's Table 3
        (rings of rows and slices are not whole tensors; the input is the caller's)."""
        return max((b for b in self.buffers if b.whole), key=lambda b: b.nbytes)


def build_plan(arch: Architecture, bounds_per_block: list[np.ndarray], rows: bool, batch: int,
               threads: int = 1, pipeline: bool = True, dtype: str = "float32") -> Plan:
    """Buffers and lifetimes for a batch; `bounds_per_block` are the slice edges of each block.

    `threads` share each image: a row-streamed block gets a line buffer per thread (each
    streams its own band of rows); the other buffers are shared. pipeline=False: rows
    without the row pipeline, every block streamed on its own (for comparison).

    With `rows`, the lowest peak the planner finds: the first blocks run as the row
    pipeline (kernels/pipeline.py), as many as give the lowest peak (the fewest of
    those), and the others are row-streamed one by one where the peak needs it. Row
    streaming buys memory where the expanded tensor is large (the early,
    high-resolution blocks); in the late 14x14 and 7x7 blocks it only costs time, since
    every row streams the block's weights through the cache again (1.5x slower there,
    measured). So, from the last block back, a block runs whole (or sliced, for t > 1)
    wherever that leaves the peak as it was; the head's 1x1 conv likewise runs on all
    pixels at once, not row by row, if that fits.
    """
    n = len(arch.blocks)
    (h, w) = arch.blocks[-1].out_size
    if not rows:
        return layout_plan(arch, bounds_per_block, [False] * n, h * w, batch, threads, dtype=dtype)
    streamed = [True] * n
    depths = range(n + 1) if pipeline else [0]
    head = h * w if dtype == "int8" else w  # the integer head runs on all pixels (MEAN's one sum)
    plan = min((layout_plan(arch, bounds_per_block, streamed, head, batch, threads, piped, dtype) for piped in depths),
               key=lambda p: (p.arena_bytes, p.piped))
    piped, budget = plan.piped, plan.arena_bytes
    trial = layout_plan(arch, bounds_per_block, streamed, h * w, batch, threads, piped, dtype)  # head on all pixels
    if trial.arena_bytes <= budget:
        plan = trial
    for i in reversed(range(piped, n)):
        trial_streamed = streamed[:i] + [False] + streamed[i + 1:]
        trial = layout_plan(arch, bounds_per_block, trial_streamed, plan.head_scratch.shape[0], batch, threads,
                            piped, dtype)
        if trial.arena_bytes <= budget:
            streamed, plan = trial_streamed, trial
    return plan


def input_ring_rows(block: Block, pads: tuple) -> int:
    """Rows of a piped block's input ring: 1, the row its expansion reads at once; for a
    residual block, from output row oy's (which the residual adds) down to the last row
    its depthwise window has pulled in by then."""
    if not block.use_residual:
        return 1
    He, top = block.in_size[0], pads[0]
    return max(last_row_needed(oy, block.stride, top, He) - oy + 1 for oy in range(block.out_size[0]))


def layout_plan(arch: Architecture, bounds_per_block: list[np.ndarray], streamed: list[bool],
                head_chunk: int, batch: int, threads: int = 1, piped: int = 0, dtype: str = "float32") -> Plan:
    """The plan for given choices: how many blocks run as the row pipeline, which others
    are row-streamed, and how many pixels of the head's conv output exist at once.

    The pipeline's buffers are all live while it runs, its phases 0 .. 3 * piped - 1:
    per block and thread a 3-row E ring of all `hidden` channels and one D row of the
    widest slice (at stride 2: one E row of the widest slice and two rows of depthwise
    sums of all channels), and a ring of output rows that the next block reads
    (input_ring_rows), or, for the last block, its whole output.

    In integer (dtype "int8", kernels/qpipeline.py, qblock.py), a row-streamed or piped
    block keeps a 3-row int8 E ring of all `hidden` channels at either stride (two rows
    of int32 depthwise sums would take 4/3 of its bytes), one int8 D row of the widest
    slice and, with t > 1, one output row of int32 projection sums that the slices add
    into before it is requantized. The D row and the sums are made and read within one
    output row's step, one block at a time, so the piped blocks share one of each."""
    integer = dtype == "int8"
    N = batch
    buffer = partial(Buffer, dtype=dtype)  # activations in the engine's dtype (the kernels' int8: 1 byte)
    image = buffer("input", (N, *arch.size, 3), first=0, last=0)
    x, steps = image, []
    end = PHASES_PER_BLOCK * piped - 1
    per_thread = (threads,) if threads > 1 else ()
    row_d = row_sums_piped = None
    if integer and piped:
        chain = list(zip(arch.blocks, bounds_per_block))[:piped]
        row_d = buffer("pipeline/depthwise", (max(b.out_size[1] * int(np.max(np.diff(c))) for b, c in chain),),
                       0, end, whole=False)
        sums_size = max((b.out_size[1] * b.cout for b, c in chain if len(c) > 2), default=0)
        if sums_size:
            row_sums_piped = Buffer("pipeline/sums", (sums_size,), 0, end, whole=False, dtype="int32")
    for block, bounds, rows in zip(arch.blocks, bounds_per_block, streamed):
        p0 = PHASES_PER_BLOCK * block.index
        materialized = len(bounds) == 2 and not rows
        cs = int(np.max(np.diff(bounds)))
        (He, We), (Ho, Wo) = block.in_size, block.out_size
        row_sums = None
        if integer and rows and len(bounds) > 2:
            row_sums = (row_sums_piped if block.index < piped else
                        Buffer(f"{block.name}/sums", (*per_thread, Wo, block.cout), p0, p0 + 2, whole=False,
                               dtype="int32"))
        if block.index < piped:
            if block.stride == 2 and not integer:  # E rows folded into two rows of depthwise sums (depthwise.fold_row)
                e = buffer(f"{block.name}/expanded", (*per_thread, 1, We, cs), 0, end, whole=False)
                d = buffer(f"{block.name}/depthwise", (*per_thread, 2, Wo, block.hidden), 0, end, whole=False)
            elif integer:
                e = buffer(f"{block.name}/expanded", (*per_thread, 3, We, block.hidden), 0, end, whole=False)
                d = row_d
            else:
                e = buffer(f"{block.name}/expanded", (*per_thread, 3, We, block.hidden), 0, end, whole=False)
                d = buffer(f"{block.name}/depthwise", (*per_thread, 1, Wo, cs), 0, end, whole=False)
            if block.index < piped - 1:
                after = arch.blocks[block.index + 1]
                ring = input_ring_rows(after, arch.pads(after.in_size, after.stride))
                y = buffer(f"{block.name}/output", (*per_thread, ring, Wo, block.cout), 0, end, whole=False)
            else:
                y = buffer(f"{block.name}/output", (N, Ho, Wo, block.cout), 0, end)
            steps.append(BlockStep(block, bounds, "piped", x, y, e, d, row_sums))
            x = y
            continue
        # the expand phase reads x; the project phase reads it again for the residual
        x.last = p0 + (2 if (block.use_residual or not materialized) else 0)
        if materialized:
            e = buffer(f"{block.name}/expanded", (N, He, We, cs), p0, p0 + 1)
            d = buffer(f"{block.name}/depthwise", (N, Ho, Wo, cs), p0 + 1, p0 + 2)
            y = buffer(f"{block.name}/output", (N, Ho, Wo, block.cout), p0 + 2, p0 + 2)
        else:
            er, dr = (3, 1) if rows else (He, Ho)
            lines = per_thread if rows else ()
            ring = block.hidden if integer and rows else cs  # integer slices add one output row at a time
            e = buffer(f"{block.name}/expanded", (*lines, er, We, ring), p0, p0 + 2, whole=False)
            d = buffer(f"{block.name}/depthwise", (*lines, dr, Wo, cs), p0, p0 + 2, whole=False)
            y = buffer(f"{block.name}/output", (N, Ho, Wo, block.cout), p0, p0 + 2)
        # integer slices add their projections up in int32, one image at a time
        sums = (Buffer(f"{block.name}/sums", (Ho, Wo, block.cout), p0, p0 + 2, whole=False, dtype="int32")
                if integer and not materialized and not rows else row_sums)
        steps.append(BlockStep(block, bounds, "streamed" if rows else "materialized" if materialized else "sliced",
                               x, y, e, d, sums))
        x = y
    head_phase = PHASES_PER_BLOCK * len(arch.blocks)
    x.last = head_phase
    head_scratch = buffer("head/conv", (head_chunk, arch.last_channels), head_phase, head_phase,
                          whole=head_chunk == math.prod(arch.blocks[-1].out_size))
    pooled = buffer("head/pooled", (N, arch.last_channels), head_phase, head_phase + 1)
    plan = Plan(N, steps, x, head_scratch, pooled, image, 0,
                (N, arch.last_channels if arch.headless else arch.classes), piped)
    plan.arena_bytes = place(plan.buffers)
    return plan
