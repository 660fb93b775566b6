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
    """Per block: the live tensors with shapes and bytes, and the peak: the engine's own
    memory. The caller's input is read where it is and not counted, unless forward must
    copy it (input_copied: another dtype or byte order, strides; a sub-batch at a time).

    The buffers are those of one sub-batch (`schedule.sub_batch` images, budget.py); a
    call holds `schedule.arenas` such arenas at once, and the output of the whole batch.
    """

    def __init__(self, plan: Plan, schedule, max_memory: int, input_copied: bool = False):
        self.plan = plan
        self.schedule = schedule
        self.max_memory = max_memory
        self.input_copied = input_copied
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
        """One sub-batch's arena."""
        return self.plan.arena_bytes

    @property
    def output_bytes(self) -> int:
        """The logits (or features) of the whole batch."""
        return self.schedule.batch * self.plan.output_shape[1] * 4

    @property
    def input_copy_bytes(self) -> int:
        """The copy of one sub-batch of the input, where forward must make one."""
        return self.plan.input.nbytes if self.input_copied else 0

    @property
    def peak_bytes(self) -> int:
        """What one forward call allocates for activations: its arenas (and input
        copies) and the output."""
        return self.schedule.arenas * (self.arena_bytes + self.input_copy_bytes) + self.output_bytes

    @property
    def ideal_bytes(self) -> int:
        """The peak with perfect packing: the most bytes live at once."""
        return (self.schedule.arenas * (max(s.peak_live_bytes for s in self.steps) + self.input_copy_bytes)
                + self.output_bytes)

    @property
    def largest_whole(self) -> tuple[str, int]:
        """The largest tensor the plan holds whole, its name and bytes per image: the
        measure of the paper's Table 3 (slices and rings of rows are not whole tensors;
        the input is the caller's). The peak is the other measure: the whole working set."""
        buf = self.plan.largest_whole
        per_image = buf.shape[0] == self.plan.batch and buf.name != "head/conv"
        return f"{buf.name}{list(buf.shape[1:] if per_image else buf.shape)}", \
            buf.nbytes // (self.plan.batch if per_image else 1)

    def __str__(self):
        lines = [f"{'step':<10} {'peak live':>12}  live tensors"]
        for s in self.steps:
            tensors = ", ".join(f"{n.split('/')[-1]}{list(shape)}" for n, shape, _ in s.live)
            lines.append(f"{s.name:<10} {_kib(s.peak_live_bytes):>12}  {tensors}")
        s = self.schedule
        arenas = f"{s.arenas} arenas x " if s.arenas > 1 else "arena "
        copy = f" + input copy {_kib(self.input_copy_bytes)}" if self.input_copied else ""
        lines.append(f"{arenas}{_kib(self.arena_bytes)}{copy} + output {_kib(self.output_bytes)} "
                     f"= peak {_kib(self.peak_bytes)} (perfect packing: {_kib(self.ideal_bytes)})")
        lines.append("input: " + ("copied (not float32 in this machine's byte order, C-contiguous, aligned and "
                                  "writeable)" if self.input_copied else "read in place, not counted")
                     + f"; largest tensor held whole: {self.largest_whole[0]}, {_kib(self.largest_whole[1])}"
                     + (f" (the first {self.plan.piped} blocks run as the row pipeline)" if self.plan.piped else ""))
        lines.append(f"batch {s.batch} in sub-batches of {s.sub_batch}"
                     + (f", {s.arenas} at once (one per thread)" if s.arenas > 1 else "")
                     + (f", each image shared by {s.sharing} threads" if s.sharing > 1 else "")
                     + f": within max_memory {_kib(self.max_memory)}")
        return "\n".join(lines)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


@dataclass
class ResolutionRow:
    size: tuple[int, int]
    channels: int       # the widest bottleneck tensor at this resolution
    nbytes: int
    tensor: str         # which tensor it is


def largest_per_resolution(arch, bytes_per_value: int = 2) -> list[ResolutionRow]:
    """The paper's Table 3: per spatial resolution, the largest tensor that must exist.

    With the streamed block, only the bottleneck tensors (block inputs and outputs) are
    ever whole; the expansions never are, the stem output included (the first-layer
    trick). The input image is not counted, as in the paper; the 1x1 row is the pooled
    feature vector.
    """
    widest = {}
    for b in arch.blocks:
        if b.cout > widest.get(b.out_size, (0, ""))[0]:
            widest[b.out_size] = (b.cout, f"{b.name} output")
    widest[(1, 1)] = (arch.last_channels, "pooled features")
    return [ResolutionRow(size, c, size[0] * size[1] * c * bytes_per_value, name)
            for size, (c, name) in sorted(widest.items(), reverse=True)]


TABLE3_VERSIONS = ("the arXiv text: a maximum of 400K, 16 channels at 112x112",
                   'another version: "1/O(1)" at 112x112, a maximum of 200K')


def format_memory(arch, reports: dict, bytes_per_value: int) -> str:
    """Table 3, then, for each mode in `reports` (label -> MemoryReport of one image),
    both measures: the largest tensor it holds whole (what Table 3 counts) and its whole
    working set (the planner's peak)."""
    unit = {2: "16-bit", 4: "32-bit"}[bytes_per_value]
    scale = lambda n: n * bytes_per_value // 4
    lines = [f"MobileNetV2 {arch.alpha}/{arch.size[0]}x{arch.size[1]}, {unit} activations",
             "", "Largest tensor that must be materialized, per resolution (the paper's Table 3):",
             f"{'resolution':>11} {'channels':>9} {'bytes':>10}  tensor"]
    rows = largest_per_resolution(arch, bytes_per_value)
    for r in rows:
        lines.append(f"{r.size[0]:>5}x{r.size[1]:<5} {r.channels:>9} {r.nbytes:>10,}  {r.tensor}")
    top = max(rows, key=lambda r: r.nbytes)
    paper = " (paper, Table 3, MobileNetV2 at 16 bits: 400K)" if bytes_per_value == 2 else ""
    lines.append(f"{'max':>11} {'':>9} {top.nbytes:>10,}  = {top.nbytes / 1000:.0f}K{paper}")
    if bytes_per_value == 2:
        lines += ["Table 3 circulates in two versions: " + "; ".join(TABLE3_VERSIONS) + "."]
    lines += ["", "Per mode, batch 1 (planner; the input image is the caller's, read in place):",
              f"{'mode':<34} {'peak (working set)':>19} {'MiB':>5} {'largest whole tensor':>21}"]
    for label, report in reports.items():
        (name, largest), peak = report.largest_whole, scale(report.peak_bytes)
        lines.append(f"{label:<34} {peak:>19,} {peak / 2**20:>5.2f} {scale(largest):>21,}  {name}")
    lines += ["largest whole tensor: what Table 3 counts, the largest tensor a mode holds whole (slices and rings",
              "of rows are not); peak: everything live at once, the arena of one forward call and the logits."]
    return "\n".join(lines)
