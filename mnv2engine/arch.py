"""MobileNetV2 as data: Table 2 of the paper, the width multiplier, and the layer list.

A reader should see Table 2 here. Everything else (the converters, the planner, the
engine) derives channel counts and layer names from `Architecture`, so a tensor of the
wrong shape is caught by comparing against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EngineError

# Table 2: expansion factor t, output channels c, repeats n, first stride s.
# (The paper's "t" here is the expansion factor; in this code base `t` means the number of
# channel slices of the streaming evaluation, so the factor is called `expansion`.)
TABLE2 = (
    # expansion, channels, repeats, stride
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
PADDINGS = ("same", "symmetric")
MIN_SIZE = 32


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10%
    (the rule of torchvision's and Keras's `_make_divisible`)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 3x3 conv with 'same'/'symmetric' padding: ceil(size / stride)."""
    return -(-size // stride)


def conv_padding(size: int, stride: int, convention: str) -> tuple[int, int]:
    """(before, after) padding of a 3x3 conv along one axis.

    'same' is TensorFlow's rule: the total padding goes mostly after, so stride 2 on an
    even size pads (0, 1). 'symmetric' is PyTorch's padding=1: (1, 1) always.
    """
    if convention == "symmetric":
        return 1, 1
    out = conv_out_size(size, stride)
    total = max((out - 1) * stride + 3 - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Block:
    """One inverted residual: [H, W, cin] -> expand to `hidden` -> depthwise(stride) -> cout.

    `index` is the block's place in the engine's list: block 0's expansion is the stem
    conv (the paper's first-layer trick). `name` is what its layers are called in a
    weight file: block0 .. block16, Table 2's count."""
    index: int
    cin: int
    hidden: int          # expanded channels n (cin * expansion), the tensor the paper slices
    cout: int
    stride: int
    expansion: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    name: str
    expands: bool = False    # has a 1x1 expansion conv (the stem is block 0's otherwise)
    passes_through: bool = False  # Architecture.block0_expands's stem step: y = relu6(stem(image))

    @property
    def use_residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout and not self.passes_through


@dataclass(frozen=True)
class Architecture:
    alpha: float = 1.0
    size: tuple[int, int] = (224, 224)
    classes: int = 1000          # 0 means headless: the engine returns pooled features
    padding: str = "same"
    # MXNet Gluon's MobileNetV2 (the ONNX model zoo's mobilenetv2-7 / -12) gives block 0 a
    # 1x1 expansion conv of factor 1 (32 -> 32, with BatchNorm and ReLU6) that the paper's
    # network does not have. It reads every channel of the stem's output, which therefore
    # exists as a tensor: the engine runs the stem as a block of its own (`passes_through`:
    # its expansion is the stem, its depthwise and projection are identities) before it.
    block0_expands: bool = False
    blocks: tuple[Block, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.alpha not in ALPHAS:
            raise EngineError(f"alpha must be one of {ALPHAS}, got {self.alpha!r}")
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or any(not isinstance(s, int) or s < MIN_SIZE for s in size):
            raise EngineError(f"input size must be an int or (height, width) >= {MIN_SIZE}, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if not isinstance(self.classes, int) or self.classes < 0:
            raise EngineError(f"classes must be a non-negative int (0 = headless), got {self.classes!r}")
        if self.padding not in PADDINGS:
            raise EngineError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        object.__setattr__(self, "blocks", tuple(self._build_blocks()))

    @property
    def stem_channels(self) -> int:
        return make_divisible(STEM_CHANNELS * self.alpha)

    @property
    def stem_out_size(self) -> tuple[int, int]:
        return tuple(conv_out_size(s, 2) for s in self.size)

    @property
    def last_channels(self) -> int:
        return make_divisible(LAST_CHANNELS * max(1.0, self.alpha))

    @property
    def headless(self) -> bool:
        return self.classes == 0

    def _build_blocks(self):
        cin, hw, index = self.stem_channels, self.stem_out_size, 0
        if self.block0_expands:
            yield Block(0, cin, cin, cin, 1, 1, hw, hw, "stem", passes_through=True)
            index = 1
        for expansion, c, n, s in TABLE2:
            cout = make_divisible(c * self.alpha)
            for i in range(n):
                stride = s if i == 0 else 1
                out_hw = tuple(conv_out_size(d, stride) for d in hw)
                number = index - self.block0_expands
                yield Block(index, cin, cin * expansion, cout, stride, expansion, hw, out_hw, f"block{number}",
                            expands=expansion != 1 or self.block0_expands and number == 0)
                cin, hw, index = cout, out_hw, index + 1

    @property
    def table2_blocks(self) -> tuple[Block, ...]:
        """Table 2's 17 blocks, the ones whose layers a weight file holds: every block
        but the stem's pass-through step of block0_expands."""
        return tuple(b for b in self.blocks if not b.passes_through)

    def tensor_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Every layer of the network with the shape of each of its conv/dense kernels.

        Kernel layouts (the engine's, whatever the source framework):
          stem       3x3 conv        [3, 3, 3, C]      (HWIO)
          expand     1x1 conv        [Cin, Cout]
          depthwise  3x3 depthwise   [3, 3, C]
          project    1x1 conv        [Cin, Cout]
          head       1x1 conv        [Cin, Cout]
          classifier dense           [Cin, classes]
        Every layer has a per-output-channel bias or BatchNorm of its output width.
        """
        layers = {"stem": (3, 3, 3, self.stem_channels)}
        for b in self.table2_blocks:
            if b.expands:
                layers[f"{b.name}/expand"] = (b.cin, b.hidden)
            layers[f"{b.name}/depthwise"] = (3, 3, b.hidden)
            layers[f"{b.name}/project"] = (b.hidden, b.cout)
        layers["head"] = (self.blocks[-1].cout, self.last_channels)
        if not self.headless:
            layers["classifier"] = (self.last_channels, self.classes)
        return layers

    def pads(self, in_size: tuple[int, int], stride: int) -> tuple[int, int, int, int]:
        """Explicit (top, bottom, left, right) padding of a 3x3 conv under this model's convention."""
        return conv_padding(in_size[0], stride, self.padding) + conv_padding(in_size[1], stride, self.padding)
