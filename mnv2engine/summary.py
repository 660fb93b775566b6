"""Per-layer table of an architecture: operator, shapes, parameters, multiply-adds."""
from __future__ import annotations

from dataclasses import dataclass

from .arch import Architecture


@dataclass(frozen=True)
class LayerRow:
    name: str
    operator: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int      # weights + biases, BatchNorm folded (what the engine stores)
    macs: int        # multiply-adds for one image


def layer_table(arch: Architecture) -> list[LayerRow]:
    H, W = arch.size
    rows = []
    (h, w), c = arch.stem_out_size, arch.stem_channels
    rows.append(LayerRow("stem", "conv3x3 s2 + relu6", (H, W, 3), (h, w, c), 27 * c + c, h * w * 27 * c))
    for b in arch.table2_blocks:  # the stem, above, is Gluon's pass-through step
        (hi, wi), (ho, wo) = b.in_size, b.out_size
        if b.expands:
            rows.append(LayerRow(f"{b.name}/expand", "pointwise + relu6", (hi, wi, b.cin), (hi, wi, b.hidden),
                                 b.cin * b.hidden + b.hidden, hi * wi * b.cin * b.hidden))
        rows.append(LayerRow(f"{b.name}/depthwise", f"depthwise3x3 s{b.stride} + relu6", (hi, wi, b.hidden),
                             (ho, wo, b.hidden), 10 * b.hidden, ho * wo * 9 * b.hidden))
        proj = "pointwise, linear" + (" + residual" if b.use_residual else "")
        rows.append(LayerRow(f"{b.name}/project", proj, (ho, wo, b.hidden), (ho, wo, b.cout),
                             b.hidden * b.cout + b.cout, ho * wo * b.hidden * b.cout))
    (h, w), cin, last = arch.blocks[-1].out_size, arch.blocks[-1].cout, arch.last_channels
    rows.append(LayerRow("head", "pointwise + relu6", (h, w, cin), (h, w, last), cin * last + last, h * w * cin * last))
    rows.append(LayerRow("pool", "global average pool", (h, w, last), (last,), 0, 0))
    if not arch.headless:
        rows.append(LayerRow("classifier", "dense, linear", (last,), (arch.classes,),
                             last * arch.classes + arch.classes, last * arch.classes))
    return rows


def format_table(arch: Architecture) -> str:
    rows = layer_table(arch)
    shape = lambda s: "x".join(map(str, s))
    lines = [f"MobileNetV2 alpha={arch.alpha} input {arch.size[0]}x{arch.size[1]} classes={arch.classes}",
             f"{'layer':<18} {'operator':<32} {'input':>13} {'output':>13} {'params':>10} {'mult-adds':>13}"]
    for r in rows:
        lines.append(f"{r.name:<18} {r.operator:<32} {shape(r.input_shape):>13} {shape(r.output_shape):>13} "
                     f"{r.params:>10,} {r.macs:>13,}")
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines.append(f"{'total':<18} {'':<32} {'':>13} {'':>13} {params:>10,} {macs:>13,}")
    lines.append(f"= {params / 1e6:.2f}M parameters, {macs / 1e6:.0f}M multiply-adds per image")
    return "\n".join(lines)
