"""The suite's own guards: a missing reference fails a CI run instead of skipping it."""
import pytest

from conftest import require


def test_a_reference_that_does_not_import_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_reference does not import.*required under CI"):
        require("no_such_reference")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no_such_reference does not import"):
        require("no_such_reference")
    assert require("numpy").__name__ == "numpy"


def test_a_reference_left_out_on_purpose_skips_even_under_ci(monkeypatch):
    """MNV2_WITHOUT names what a run leaves out (the ARM job: torch); nothing else."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MNV2_WITHOUT", "other, no_such_reference")
    with pytest.raises(pytest.skip.Exception, match="no_such_reference.sub does not import, left out on purpose"):
        require("no_such_reference.sub")
    monkeypatch.setenv("MNV2_WITHOUT", "no_such")  # a prefix of the name is not the name
    with pytest.raises(pytest.fail.Exception, match="required under CI"):
        require("no_such_reference")
