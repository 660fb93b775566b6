"""The plan as numbers, for kernels.network.forward: one call runs the whole network.

`Params` holds every packed weight of the network in one aligned float32 array (the
engine's BlockWeights are views into it). `compile_plan` turns a Plan's buffers and the
weights' places into the rows of network.BLOCK and network.HEAD.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from .kernels.network import BLOCK, HEAD
from .memory import ALIGN, allocate
from .model import BlockWeights, Conv
from .plan import Plan

_FLOATS_PER_ALIGN = ALIGN // 4


class Params:
    """Packed weights in one float32 array, each starting on a cache line."""

    def __init__(self, arrays: list[np.ndarray]):
        sizes = [-(-a.size // _FLOATS_PER_ALIGN) * _FLOATS_PER_ALIGN for a in arrays]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.array = allocate(4 * int(sum(sizes))).view(np.float32)
        self.array[:] = 0
        self.views = []
        for a, off in zip(arrays, self.offsets):
            part = self.array[off:off + a.size]
            part[:] = a.ravel()
            self.views.append(part.reshape(a.shape))


@dataclass(frozen=True)
class Weights:
    """The engine's runtime weights: per block, and the head and classifier (or None)."""
    blocks: list[BlockWeights]
    head: Conv
    classifier: Conv | None
    params: np.ndarray       # one float32 array: every array above is a view into it
    offsets: dict            # id of each array above -> its offset in params
    ints: np.ndarray         # every block's slice bounds, one after the other
    bounds_at: list[int]     # where block i's bounds start in ints


def gather(blocks: list[BlockWeights], head: Conv, classifier: Conv | None) -> Weights:
    """Move every weight array into one Params pool (each array becomes a view into it)."""
    names = [f.name for f in fields(BlockWeights) if f.name != "bounds"]
    layers = [c for c in (head, classifier) if c is not None]
    arrays = [getattr(b, n) for b in blocks for n in names] + [a for c in layers for a in (c.kernel, c.bias)]
    pool = Params(arrays)
    views = iter(pool.views)
    new_blocks = [replace(b, **{n: next(views) for n in names}) for b in blocks]
    new_layers = [Conv(next(views), next(views)) for _ in layers]
    offsets = {id(v): int(off) for v, off in zip(pool.views, pool.offsets)}
    ints = np.concatenate([b.bounds for b in blocks]).astype(np.int64)
    bounds_at = np.concatenate([[0], np.cumsum([len(b.bounds) for b in blocks])[:-1]]).astype(int).tolist()
    return Weights(new_blocks, new_layers[0], new_layers[1] if classifier is not None else None,
                   pool.array, offsets, ints, bounds_at)


def compile_plan(plan: Plan, weights: Weights, stem_pads, dw_pads) -> tuple[np.ndarray, np.ndarray]:
    """The rows of network.BLOCK (one per block) and network.HEAD (one) for this plan."""
    at = weights.offsets
    blocks = np.zeros(len(plan.steps), BLOCK)
    for i, (step, w, pads, bounds_at) in enumerate(zip(plan.steps, weights.blocks, dw_pads, weights.bounds_at)):
        b = step.block
        n, h, wd, cin = step.x.shape
        _, ho, wo, cout = step.y.shape
        stem = b.index == 0
        values = dict(
            x=step.x.offset // 4, n=n, h=h, w=wd, cin=cin, y=step.y.offset // 4, ho=ho, wo=wo, cout=cout,
            e=step.e.offset // 4, e_len=step.e.nbytes // 4, d=step.d.offset // 4, d_len=step.d.nbytes // 4,
            stem=stem, exp_stride=2 if stem else 1, dw_stride=b.stride,
            residual=b.use_residual, rows=step.rows,
            we=at[id(w.expand)], we_len=w.expand.size, be=at[id(w.expand_bias)], hidden=b.hidden,
            wd=at[id(w.depthwise)], bd=at[id(w.depthwise_bias)], wp=at[id(w.project)], bp=at[id(w.project_bias)],
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
                  hw=at[id(weights.head.kernel)], hb=at[id(weights.head.bias)],
                  classes=0 if cls is None else cls.bias.size,
                  cw=0 if cls is None else at[id(cls.kernel)], cb=0 if cls is None else at[id(cls.bias)])
    for key, value in values.items():
        head[key][0] = value
    return blocks, head
