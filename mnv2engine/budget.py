"""Any batch in bounded memory: how a forward call cuts a batch into sub-batches so that
its activation memory stays within `max_memory`, whatever the batch.

A forward call's activations live in arenas (plan.py), one per sub-batch being run: one
when the threads share each image, one per thread when they take whole images. An
arena grows linearly with its images (at alpha 0.35 / 96, 0.5 MiB an image: 1 GiB for
2000 images), so the batch runs in sub-batches of the largest size whose arenas fit
the budget together, one after another; the results are the same, image by image,
since no kernel mixes images. The returned logits are not counted: they are the
caller's, 4 bytes per class per image. Nor is the caller's input, which forward reads
in place; but where it must copy it (strides, byte order), each sub-batch's copy is
counted with its arena.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EngineError

MAX_MEMORY = 256 * 2**20  # bytes: the default budget; 1.0 / 224 holds 6 MiB an image (1.4 row-streamed)


def checked(max_memory) -> int:
    """max_memory as an int, or an EngineError naming what was given."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 1:
        raise EngineError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return int(max_memory)


@dataclass(frozen=True)
class Schedule:
    """How one forward call runs a batch."""
    batch: int
    sharing: int     # threads per image: all of them for a batch smaller than the threads, else 1
    arenas: int      # arenas at once: one per thread taking whole images, or the one shared
    sub_batch: int   # images per arena at most


class Budget:
    """The sub-batches of a forward call within max_memory bytes of arenas (and copies
    of the input, where forward makes them).

    arena_bytes(images, sharing): the arena of a call on that many images, each shared by
    `sharing` threads; image_bytes: one image of the input; most: the most images of a
    sub-batch (None: as many as fit).
    """

    def __init__(self, max_memory, arena_bytes, image_bytes: int = 0, most: int | None = None):
        self.max_memory = checked(max_memory)
        self._arena_bytes = arena_bytes
        self._image_bytes = image_bytes
        self._most = most
        self._one = {}      # (sharing, copied) -> the memory of one image
        self._largest = {}  # (sharing, arenas, copied) -> the largest sub-batch that fits

    def _bytes(self, images: int, sharing: int, copied: bool) -> int:
        return self._arena_bytes(images, sharing) + (images * self._image_bytes if copied else 0)

    def schedule(self, batch: int, threads: int, copied: bool = False) -> Schedule:
        """The schedule of a batch on `threads` threads, its input copied or not; an
        EngineError if one image does not fit the budget."""
        sharing = threads if batch < threads else 1
        arenas = min(threads // sharing, batch, self.max_memory // self.one_image(sharing, copied))
        per_arena = -(-batch // arenas)
        return Schedule(batch, sharing, arenas,
                        min(self._largest_sub_batch(sharing, arenas, copied), per_arena, self._most or per_arena))

    def one_image(self, sharing: int, copied: bool = False) -> int:
        """The memory of one image shared by `sharing` threads, if it fits the budget."""
        if (sharing, copied) not in self._one:
            self._one[sharing, copied] = self._bytes(1, sharing, copied)
        one = self._one[sharing, copied]
        if one > self.max_memory:
            raise EngineError(f"max_memory={self.max_memory:,} bytes is less than one image needs: "
                              f"{one:,} bytes of activations{' on %d threads' % sharing if sharing > 1 else ''} "
                              "(raise max_memory; rows=True or a larger t needs less)")
        return one

    def _largest_sub_batch(self, sharing: int, arenas: int, copied: bool) -> int:
        """The most images whose arena, `arenas` times over, fits the budget. The arena
        is linear in the images up to alignment, so the first guess is near; planning
        the guess corrects it."""
        key = (sharing, arenas, copied)
        if key not in self._largest:
            budget, one = self.max_memory // arenas, self.one_image(sharing, copied)
            per_image = max(self._bytes(2, sharing, copied) - one, 1)
            images = 1 + (budget - one) // per_image
            while images > 1 and (size := self._bytes(images, sharing, copied)) > budget:
                images = min(images - 1, images * budget // size)
            self._largest[key] = images
        return self._largest[key]
