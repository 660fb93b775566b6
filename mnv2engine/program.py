"""The plan as numbers, for kernels.network.forward: one call runs the whole network.

`gather` puts every packed weight of the network in one aligned float32 array (the
engine's BlockWeights are views into it). `compile_plan` turns a Plan's buffers and the
weights' places into records: one BLOCK per inverted residual and one HEAD, which the
kernels read field by field (kernels/geometry.py makes the views).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from .kernels.modes import NAMES, Compiled, compiled
from .memory import ALIGN, allocate
from .model import BlockWeights, Conv
from .plan import Plan

_FLOATS_PER_ALIGN = ALIGN // 4

# Offsets and lengths count elements of the arena, params or ints; every field is an int64.
BLOCK = np.dtype([(name, np.int64) for name in (
    "x", "n", "h", "w", "cin",           # input [n, h, w, cin] at arena[x:]
    "y", "ho", "wo", "cout",             # output [n, ho, wo, cout] at arena[y:]
    "e", "e_len", "d", "d_len",          # expansion and depthwise scratch
    "mode",                              # kernels/modes.py: MATERIALIZED, SLICED, STREAMED, PIPED
    "stem", "exp_stride", "exp_top", "exp_bottom", "exp_left", "exp_right",
    "dw_stride", "dw_top", "dw_bottom", "dw_left", "dw_right",
    "residual",
    "x_rows", "y_rows",                  # piped: rings of rows of the input and output (0: whole)
    "we", "be", "hidden", "wd", "bd", "wp", "bp",   # weights at params[...]
    "bounds", "t",                       # slice edges at ints[bounds:bounds + t + 1]
)])

HEAD = np.dtype([(name, np.int64) for name in (
    "x", "n", "pixels", "cin",           # the last block's output, [n, pixels, cin]
    "cout", "chunk", "scratch", "pooled",  # head conv: scratch [chunk, cout], pooled [n, cout]
    "hw", "hb",                           # head conv weights (panels) and bias
    "classes", "cw", "cb",                # classifier (classes = 0: headless)
)])


def _pool(arrays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One float32 array holding `arrays`, each starting on a cache line; and their views in it."""
    sizes = [-(-a.size // _FLOATS_PER_ALIGN) * _FLOATS_PER_ALIGN for a in arrays]
    pool = allocate(4 * sum(sizes)).view(np.float32)
    pool[:] = 0
    views, at = [], 0
    for a, size in zip(arrays, sizes):
        part = pool[at:at + a.size]
        part[:] = a.ravel()
        views.append(part.reshape(a.shape))
        at += size
    return pool, views


@dataclass(frozen=True)
class Weights:
    """The engine's runtime weights: per block, and the head and classifier (or None)."""
    blocks: list[BlockWeights]
    head: Conv
    classifier: Conv | None
    params: np.ndarray       # one float32 array: every array above is a view into it
    ints: np.ndarray         # every block's slice bounds, one after the other
    bounds_at: list[int]     # where block i's bounds start in ints

    def at(self, view: np.ndarray) -> int:
        """Where a weight array (a view into params) starts in params, in floats."""
        return (view.ctypes.data - self.params.ctypes.data) // 4


def gather(blocks: list[BlockWeights], head: Conv, classifier: Conv | None) -> Weights:
    """Move every weight array into one pool (each array becomes a view into it)."""
    names = [f.name for f in fields(BlockWeights) if f.name != "bounds"]
    layers = [c for c in (head, classifier) if c is not None]
    arrays = [getattr(b, n) for b in blocks for n in names] + [a for c in layers for a in (c.kernel, c.bias)]
    params, views = _pool(arrays)
    views = iter(views)
    new_blocks = [replace(b, **{n: next(views) for n in names}) for b in blocks]
    new_layers = [Conv(next(views), next(views)) for _ in layers]
    ints = np.concatenate([b.bounds for b in blocks]).astype(np.int64)
    bounds_at = np.concatenate([[0], np.cumsum([len(b.bounds) for b in blocks])[:-1]]).astype(int).tolist()
    return Weights(new_blocks, new_layers[0], new_layers[1] if classifier is not None else None,
                   params, ints, bounds_at)


@dataclass(frozen=True)
class Program:
    """A plan compiled for the kernels: its records, the code they need, and the state
    its passes keep."""
    blocks: np.ndarray   # BLOCK records, one per block
    head: np.ndarray     # one HEAD record
    compiled: Compiled   # which evaluations forward compiles
    cuts: np.ndarray     # int64 [blocks, 2]: two threads' learned cuts (kernels/block.py); 0: half way


def compile_plan(plan: Plan, weights: Weights, stem_pads, dw_pads) -> Program:
    """The records of this plan: one BLOCK per block, one HEAD."""
    at = weights.at
    blocks = np.zeros(len(plan.steps), BLOCK)
    for i, (step, w, pads, bounds_at) in enumerate(zip(plan.steps, weights.blocks, dw_pads, weights.bounds_at)):
        b = step.block
        stem = b.index == 0
        (h, wd), cin = (plan.input.shape[1:3], 3) if stem else (b.in_size, b.cin)
        (ho, wo), cout = b.out_size, b.cout
        # block 0's x is the caller's image, not in the arena (offset -1: unused); in the
        # pipeline, a block's input and output may be rings of rows (per thread)
        x_rows = step.x.shape[-3] if step.piped and not stem else 0
        y_rows = step.y.shape[-3] if step.piped and step.block.index < plan.piped - 1 else 0
        values = dict(
            x=max(step.x.offset, 0) // 4, n=plan.batch, h=h, w=wd, cin=cin, y=step.y.offset // 4, ho=ho, wo=wo,
            cout=cout, e=step.e.offset // 4, e_len=step.e.nbytes // 4, d=step.d.offset // 4, d_len=step.d.nbytes // 4,
            stem=stem, exp_stride=2 if stem else 1, dw_stride=b.stride,
            mode=NAMES.index(step.mode), residual=b.use_residual, x_rows=x_rows, y_rows=y_rows,
            we=at(w.expand), be=at(w.expand_bias), hidden=b.hidden,
            wd=at(w.depthwise), bd=at(w.depthwise_bias), wp=at(w.project), bp=at(w.project_bias),
            bounds=bounds_at, t=len(w.bounds) - 1)
        for side, value in zip(("top", "bottom", "left", "right"), stem_pads if stem else (0, 0, 0, 0)):
            values[f"exp_{side}"] = value
        for side, value in zip(("top", "bottom", "left", "right"), pads):
            values[f"dw_{side}"] = value
        for key, value in values.items():
            blocks[key][i] = value
    head = np.zeros(1, HEAD)
    n, h, wd, cin = plan.head_x.shape
    chunk, cout = plan.head_scratch.shape
    cls = weights.classifier
    values = dict(x=plan.head_x.offset // 4, n=n, pixels=h * wd, cin=cin, cout=cout, chunk=chunk,
                  scratch=plan.head_scratch.offset // 4, pooled=plan.pooled.offset // 4,
                  hw=at(weights.head.kernel), hb=at(weights.head.bias),
                  classes=0 if cls is None else cls.bias.size,
                  cw=0 if cls is None else at(cls.kernel), cb=0 if cls is None else at(cls.bias))
    for key, value in values.items():
        head[key][0] = value
    return Program(blocks, head, compiled(blocks, weights.ints), np.zeros((len(blocks), 2), np.int64))

