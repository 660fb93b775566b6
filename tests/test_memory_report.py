"""`mnv2 memory`: the paper's Table 3 from the architecture, checked against the shapes a
PyTorch model actually produces and against the paper's 400K maximum."""
import re


from mnv2engine import Architecture
from mnv2engine.cli import main
from mnv2engine.report import largest_per_resolution

from conftest import require

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import MobileNetV2


def test_widest_bottleneck_per_resolution_matches_pytorch_shapes():
    model = MobileNetV2().eval()
    widest, h = {}, torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        h = model.features[0](h)
        for block in model.features[1:-1]:
            h = block(h)
            size = tuple(h.shape[2:])
            widest[size] = max(widest.get(size, 0), h.shape[1])
    widest[(1, 1)] = model.last_channel
    rows = largest_per_resolution(Architecture(), bytes_per_value=2)
    assert {r.size: r.channels for r in rows} == widest


def test_table3_maximum_is_the_papers_400K(capsys):
    rows = largest_per_resolution(Architecture(), bytes_per_value=2)
    top = max(rows, key=lambda r: r.nbytes)
    assert top.size == (112, 112) and abs(top.nbytes - 400e3) / 400e3 < 0.01
    assert main(["memory", "--alpha", "0.35", "--size", "96"]) == 0
    out = capsys.readouterr().out
    assert "Table 3" in out and "streamed, no pipeline" in out and "sliced (t=4)" in out
    assert "400K" in out and "200K" in out  # both versions of Table 3


def test_every_mode_reports_both_measures_and_the_pipeline_is_lowest(capsys):
    """1.0/224 at 16 bits: the row pipeline's whole working set is below Table 3's largest
    single tensor (400K, arXiv), and the largest tensor it holds whole below 200K."""
    assert main(["memory"]) == 0
    modes = {}
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"(\S.*?)\s{2,}([\d,]+)\s+[\d.]+\s+([\d,]+)\s+(\S.*)$", line)
        if m and line.startswith(("materialized", "sliced", "streamed", "rows")):
            modes[m[1]] = (int(m[2].replace(",", "")), int(m[3].replace(",", "")), m[4])
    assert set(modes) >= {"materialized (t=1)", "sliced (t=4)", "streamed, no pipeline",
                          "rows=True: piped, then streamed"}
    peak, largest, _ = modes["rows=True: piped, then streamed"]
    assert peak < min(p for label, (p, _, _) in modes.items() if not label.startswith("rows=True"))
    assert peak < 400_000 and largest < 200_000
    assert modes["sliced (t=4)"][1:] == (401_408, "block0/output[112, 112, 16]")
