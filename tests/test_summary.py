"""`mnv2 summary` totals against a PyTorch model's own parameter and multiply-add counts,
and against the paper (3.4M parameters, 300M multiply-adds for 1.0/224)."""
import pytest

from mnv2engine import Architecture
from mnv2engine.cli import main
from mnv2engine.summary import layer_table

from conftest import require

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
nn = torch.nn
from torch_reference import MobileNetV2


def torch_counts(model, size):
    """Folded parameters (conv and linear weights, one bias per BatchNorm or Linear) and
    multiply-adds counted by forward hooks."""
    params = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    params += sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    params += sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear))
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        else:
            macs.append(m.in_features * m.out_features)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return params, sum(macs)


@pytest.mark.slow
@pytest.mark.parametrize("alpha,size", [(1.0, 224), (0.35, 96), (1.4, 113)])
def test_totals_match_pytorch(alpha, size):
    rows = layer_table(Architecture(alpha=alpha, size=size))
    params, macs = torch_counts(MobileNetV2(width_mult=alpha), size)
    assert sum(r.params for r in rows) == params
    assert sum(r.macs for r in rows) == macs


def test_paper_totals_for_1_0_224(capsys):
    rows = layer_table(Architecture())
    assert abs(sum(r.params for r in rows) - 3.4e6) < 0.1e6
    assert abs(sum(r.macs for r in rows) - 300e6) < 5e6
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "block16/project" in out and "M multiply-adds" in out
