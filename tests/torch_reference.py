"""A PyTorch MobileNetV2 with torchvision's module tree and state_dict layout.

Written from torchvision's `models/mobilenetv2.py` semantics (torchvision itself does not
install beside torch 2.13 here): Conv-BN-ReLU6 stem, inverted residuals with no expansion
conv when the factor is 1, a linear projection, the residual add only for stride 1 and
equal channels and nothing after it, the last 1x1 conv, average pool, dropout + Linear.
"""
import numpy as np

try:
    # Without torch, the test modules that import this one skip (failing under CI unless
    # MNV2_WITHOUT names torch: conftest.require), instead of failing at collection.
    from conftest import require
except ImportError:  # imported by benchmarks/latency.py, outside pytest
    from importlib import import_module as require

torch = require("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
            [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNReLU6(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """He-scaled conv weights and non-trivial BatchNorm statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 + 0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def run_with_blocks(model: MobileNetV2, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Logits, pooled features and every block's output (NHWC), from an NHWC input."""
    out = {}
    with torch.no_grad():
        h = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
        h = model.features[0](h)
        for i, block in enumerate(model.features[1:-1]):
            h = block(h)
            out[f"block{i}"] = h.permute(0, 2, 3, 1).numpy()
        h = model.features[-1](h)
        pooled = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
        out["pooled"] = pooled.numpy()
        out["logits"] = model.classifier(pooled).numpy()
    return out


def reference_and_engine(tmp_path, alpha, size, classes, seed, **engine_kw):
    """A randomized model, and an Engine on its state_dict as `mnv2 convert` makes it."""
    from mnv2engine import Engine, convert
    model = randomized(MobileNetV2(num_classes=max(classes, 1), width_mult=alpha), seed)
    state = model.state_dict()
    if classes == 0:  # a headless feature extractor: no classifier tensors in the file
        state = {k: v for k, v in state.items() if not k.startswith("classifier")}
    torch.save(state, tmp_path / "mnv2.pth")
    convert(tmp_path / "mnv2.pth", tmp_path / "mnv2.h5", size=size)
    return model, Engine.load(tmp_path / "mnv2.h5", **engine_kw)
