"""The memory planner: every activation buffer of a forward pass lives in one arena.

Time is counted in phases. Block i runs phases 3i (expand), 3i + 1 (depthwise) and
3i + 2 (project); a tensor is live over an inclusive [first, last] phase range. Tensors
whose ranges overlap get disjoint byte ranges; the others may share. Placement is
greedy by size (TFLite's arena planner does the same): largest tensor first, at the
lowest offset that fits beside the live tensors already placed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALIGN = 64  # bytes: one cache line, and enough for any SIMD load


@dataclass
class Buffer:
    name: str
    shape: tuple[int, ...]
    first: int
    last: int
    offset: int = field(default=-1)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4  # float32

    def live_at(self, phase: int) -> bool:
        return self.first <= phase <= self.last


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def place(buffers: list[Buffer]) -> int:
    """Assign each buffer an offset; return the arena size in bytes."""
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.nbytes, b.first)):
        clashes = sorted((b for b in placed if b.first <= buf.last and buf.first <= b.last),
                         key=lambda b: b.offset)
        offset = 0
        for other in clashes:
            if offset + buf.nbytes <= other.offset:
                break
            offset = max(offset, _aligned(other.offset + other.nbytes))
        buf.offset = offset
        placed.append(buf)
    return max((_aligned(b.offset + b.nbytes) for b in buffers), default=0)


def view(arena: np.ndarray, buf: Buffer) -> np.ndarray:
    """The float32 array of `buf` inside the uint8 arena."""
    return arena[buf.offset:buf.offset + buf.nbytes].view(np.float32).reshape(buf.shape)
