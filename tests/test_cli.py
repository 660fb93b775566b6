import json

import numpy as np
from PIL import Image

from mnv2engine.cli import main
from mnv2engine.weights import write_mnv2
from mnv2engine.weights.random import random_weightset


def test_demo_runs_a_random_network(capsys):
    assert main(["demo", "--alpha", "0.35", "--size", "64", "--runs", "2", "--t", "2"]) == 0
    out = capsys.readouterr().out
    assert "seeded random MobileNetV2 0.35/64" in out and "median" in out and "MiB" in out


def test_convert_then_predict(tmp_path, capsys):
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), tmp_path / "src.h5")
    assert main(["convert", str(tmp_path / "src.h5"), str(tmp_path / "dst.h5")]) == 0
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "dst.h5"),
                 "--top", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["image"].endswith("a.png") and len(result[0]["top"]) == 2


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnv2: error:") and "no such file" in err and "Traceback" not in err
