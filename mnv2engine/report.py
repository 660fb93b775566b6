"""The planner's memory figures, block by block, as a table and as data."""
from __future__ import annotations

from dataclasses import dataclass

from .plan import PHASES_PER_BLOCK, Plan


@dataclass
class StepMemory:
    name: str
    live: list          # [(buffer name, shape, bytes)] live at any phase of the step
    peak_live_bytes: int  # the largest sum of simultaneously live buffers within the step


class MemoryReport:
    """Per block: the live tensors with shapes and bytes, and the peak; the input included."""

    def __init__(self, plan: Plan):
        self.plan = plan
        buffers = plan.buffers
        self.steps = []
        n_blocks = len(plan.steps)
        names = [s.block.name for s in plan.steps] + ["head", "classifier"]
        for i, name in enumerate(names):
            phases = (range(PHASES_PER_BLOCK * i, PHASES_PER_BLOCK * (i + 1)) if i < n_blocks
                      else [PHASES_PER_BLOCK * n_blocks + i - n_blocks])
            live = [b for b in buffers if any(b.live_at(p) for p in phases)]
            peak = max(sum(b.nbytes for b in buffers if b.live_at(p)) for p in phases)
            self.steps.append(StepMemory(name, [(b.name, b.shape, b.nbytes) for b in live], peak))

    @property
    def arena_bytes(self) -> int:
        return self.plan.arena_bytes

    @property
    def peak_bytes(self) -> int:
        """What one forward call allocates for activations: the arena and the output."""
        return self.plan.peak_bytes

    @property
    def ideal_bytes(self) -> int:
        """The peak with perfect packing: the most bytes live at once."""
        return max(s.peak_live_bytes for s in self.steps) + self.plan.output_bytes

    def __str__(self):
        lines = [f"{'step':<10} {'peak live':>12}  live tensors"]
        for s in self.steps:
            tensors = ", ".join(f"{n.split('/')[-1]}{list(shape)}" for n, shape, _ in s.live)
            lines.append(f"{s.name:<10} {_kib(s.peak_live_bytes):>12}  {tensors}")
        lines.append(f"arena {_kib(self.arena_bytes)} + output {_kib(self.plan.output_bytes)} "
                     f"= peak {_kib(self.peak_bytes)} (perfect packing: {_kib(self.ideal_bytes)})")
        return "\n".join(lines)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"
