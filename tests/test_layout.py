"""The repo root shadows nothing: started in the checkout (a REPL, a notebook,
`python -m pytest`), Python puts the root first on sys.path, where the `kernels/` folder
(mnv2engine.kernels) must not hide the PyPI package `kernels` that transformers uses."""
import subprocess
import sys

import pytest

from conftest import ROOT, require


def _in_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_transformers_mobilenet_v2_imports_from_the_repo_root():
    require("transformers")
    run = _in_root("from transformers import MobileNetV2Config, MobileNetV2ForImageClassification as M\n"
                   "M(MobileNetV2Config(num_labels=3, image_size=32))\n"
                   "import kernels, os\n"
                   "assert os.path.dirname(kernels.__file__) != os.path.abspath('kernels'), kernels.__file__\n")
    assert run.returncode == 0, run.stderr[-3000:]


def test_the_engine_still_imports_from_the_repo_root():
    run = _in_root("import mnv2engine.kernels as k, os\n"
                   "assert os.path.dirname(k.__file__) == os.path.abspath('kernels'), k.__file__\n"
                   "from mnv2engine import Engine\n")
    assert run.returncode == 0, run.stderr[-3000:]
