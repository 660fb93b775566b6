"""A bounded least-recently-used map: what the engine keeps per input size and batch.

An engine runs any input size, and a plan (with its compiled program) is made per
(batch, height, width, threads) on first use. Kept in a dict, a caller who sends many
sizes would grow the engine without bound; kept here, the oldest entry goes once more
than `capacity` are held, and is made again if it is ever needed.
"""
from __future__ import annotations

from collections import OrderedDict


class Recent:
    """The `capacity` most recently used entries; `get(key, make)` makes a missing one."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries = OrderedDict()

    def get(self, key, make):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = make()
        self._entries[key] = value
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def __len__(self):
        return len(self._entries)

    def __contains__(self, key):
        return key in self._entries
