"""The memory planner: every activation buffer of a forward pass lives in one arena.

Time is counted in phases. Block i runs phases 3i (expand), 3i + 1 (depthwise) and
3i + 2 (project); a tensor is live over an inclusive [first, last] phase range. Tensors
whose ranges overlap get disjoint byte ranges; the others may share. Placement is
greedy by size (TFLite's arena planner does the same): largest tensor first, at the
lowest offset that fits beside the live tensors already placed.

Offsets are also coloured: the i-th buffer starts at (i mod 4) * 1 KiB past a 4 KiB
boundary. A block reads x, E and D and writes y at once; when their addresses agree in
the low 12 bits the CPU's 4K-aliasing check stalls loads behind stores (measured: 2.3 vs
1.4 ms for block 1 row-streamed). Buffers are listed so that the four a block touches
are consecutive, which makes their colours distinct.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALIGN = 64  # bytes: one cache line, and enough for any SIMD load
PAGE, COLOURS = 4096, 4


@dataclass
class Buffer:
    name: str
    shape: tuple[int, ...]
    first: int
    last: int
    offset: int = field(default=-1)
    whole: bool = True  # a whole tensor, not a slice or rows of one (Table 3 counts these)
    dtype: str = "float32"  # each buffer counts in its own bytes (int8 activations: 1)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def live_at(self, phase: int) -> bool:
        return self.first <= phase <= self.last


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _coloured(offset: int, colour: int) -> int:
    """The lowest offset >= `offset` that lies `colour` bytes past a page boundary."""
    return offset + (colour - offset) % PAGE


def place(buffers: list[Buffer]) -> int:
    """Assign each buffer an offset; return the arena size in bytes."""
    colour = {id(b): (i % COLOURS) * (PAGE // COLOURS) for i, b in enumerate(buffers)}
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.nbytes, b.first)):
        clashes = sorted((b for b in placed if b.first <= buf.last and buf.first <= b.last),
                         key=lambda b: b.offset)
        offset = _coloured(0, colour[id(buf)])
        for other in clashes:
            if offset + buf.nbytes <= other.offset:
                break
            offset = max(offset, _coloured(other.offset + other.nbytes, colour[id(buf)]))
        buf.offset = offset
        placed.append(buf)
    return max((_aligned(b.offset + b.nbytes) for b in buffers), default=0)


def allocate(nbytes: int) -> np.ndarray:
    """A fresh uint8 arena of `nbytes` starting on an ALIGN-byte boundary. np.empty does
    not promise that (large blocks start 16 bytes into a page), and a misaligned arena
    was measured to slow the kernels by up to 40%."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes]


def view(arena: np.ndarray, buf: Buffer) -> np.ndarray:
    """The array of `buf` inside the uint8 arena, in its dtype."""
    return arena[buf.offset:buf.offset + buf.nbytes].view(buf.dtype).reshape(buf.shape)
