"""The four evaluations of a block, and which of them an engine compiles.

  materialized  t = 1: the expansion E and the depthwise output D exist whole
  sliced        t > 1: one slice of E and D at a time, each whole
  streamed      E in a 3-row line buffer, D one row, the output row by row
  piped         the stem and the first blocks, row by row across blocks (pipeline.py)

Engine(rows=True) runs the first blocks piped and the others streamed or whole, as
the planner finds lowest; otherwise every block is materialized or sliced, by its t.
"""
from typing import NamedTuple

import numpy as np

from .simd import LANES

MATERIALIZED, SLICED, STREAMED, PIPED = 0, 1, 2, 3
NAMES = ("materialized", "sliced", "streamed", "piped")


class Compiled(NamedTuple):
    """What code a forward pass compiles, one argument each: True where some block of
    the table needs it, None where none does. None is a type of its own to Numba, so
    the code under `if mode is None` is left out at compile time: a first forward
    compiles only what its engine uses (materialized alone: 40% less).
    narrow: a slice whose width is not a multiple of 16 (pairs.py, or the 8-channel
    depthwise)."""
    materialized: bool | None
    sliced: bool | None
    streamed: bool | None
    piped: bool | None
    narrow: bool | None


def compiled(blocks: np.ndarray, ints: np.ndarray) -> Compiled:
    """The code a table of blocks needs."""
    modes = set(blocks["mode"].tolist())
    narrow = any((np.diff(ints[b["bounds"]:b["bounds"] + b["t"] + 1]) % LANES != 0).any() for b in blocks)
    return Compiled(*(True if used else None for used in [mode in modes for mode in range(len(NAMES))] + [narrow]))
