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


def _model_and_images(tmp_path):
    write_mnv2(random_weightset(alpha=0.35, size=64, classes=4), tmp_path / "m.h5")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return tmp_path / "m.h5", folder


def test_predict_folder_reports_bad_images_and_predicts_the_rest(tmp_path, capsys, monkeypatch):
    weights, folder = _model_and_images(tmp_path)
    monkeypatch.setenv("MNV2_WEIGHTS", str(weights))  # weight resolution from the environment
    assert main(["predict", str(folder), "--top", "2", "--json"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [r["image"].rsplit("/", 1)[-1] for r in result] == ["0.png", "1.png", "2.png", "broken.jpg"]
    assert all(len(r["top"]) == 2 for r in result[:3]) and "error" in result[3]
    assert "broken.jpg" in captured.err
    assert main(["predict", str(folder / "0.png"), "--top", "1"]) == 0
    table = capsys.readouterr().out
    assert "0.png" in table and "%" in table


def test_predict_without_weights_says_how_to_get_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MNV2_WEIGHTS", raising=False)
    monkeypatch.setattr("mnv2engine.cli.default_weights_path", lambda: tmp_path / "none.h5")
    assert main(["predict", "x.jpg"]) == 2
    assert "mnv2 convert" in capsys.readouterr().err


def test_the_recorded_size_is_the_default_of_summary_memory_and_predict(tmp_path, capsys):
    write_mnv2(random_weightset(alpha=0.35, size=80, classes=4), tmp_path / "m.h5")
    weights = ["--weights", str(tmp_path / "m.h5")]
    assert main(["summary", *weights]) == 0
    assert "input 80x80" in capsys.readouterr().out
    assert main(["summary", *weights, "--size", "96"]) == 0
    assert "input 96x96" in capsys.readouterr().out
    assert main(["memory", *weights]) == 0
    assert "0.35/80x80" in capsys.readouterr().out
    assert main(["memory", *weights, "--size", "112"]) == 0
    assert "0.35/112x112" in capsys.readouterr().out
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(tmp_path / "a.png")
    from mnv2engine import Engine
    engine = Engine.load(tmp_path / "m.h5")
    for flags, size in (([], None), (["--size", "48"], 48)):
        assert main(["predict", str(tmp_path / "a.png"), *weights, "--top", "4", "--json", *flags]) == 0
        got = [t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]]
        assert got == [round(p, 6) for _, _, p in engine.predict(tmp_path / "a.png", top=4, size=size)]
    assert main(["predict", str(tmp_path / "a.png"), *weights, "--top", "1", "--size", "16"]) == 2
    assert "input size must be" in capsys.readouterr().err


def test_compilation_is_announced_once_and_only_when_numba_compiles():
    """The first-run message comes from Numba's compile events: a new function compiles
    (one line, however many functions), a function already compiled does not."""
    import io

    from numba import njit

    from mnv2engine.compiling import announce_compilation

    @njit
    def twice(a):
        return 2 * a

    @njit
    def thrice(a):
        return 3 * a

    out = io.StringIO()
    with announce_compilation(out):
        twice(1)
        thrice(1)
    assert out.getvalue().count("compiling kernels for this CPU (first run only") == 1
    quiet = io.StringIO()
    with announce_compilation(quiet):
        twice(2)
    assert quiet.getvalue() == ""
