"""Class labels: from a text file (one per line), fitted to a model's number of classes."""
from __future__ import annotations

from pathlib import Path

from mnv2engine.errors import EngineError


def parse_labels(text: str) -> list[str]:
    """One label per non-blank line, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_labels(path, classes: int) -> list[str]:
    """Labels for `classes` outputs from a file with one label per line.

    A 1001-line ImageNet file (line 0 'background') serves both 1001-class models and,
    without its first line, 1000-class ones.
    """
    try:
        lines = parse_labels(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise EngineError(f"{path}: cannot read labels ({e})") from None
    if len(lines) == classes + 1 and lines[0].lower() == "background":
        lines = lines[1:]
    if len(lines) != classes:
        raise EngineError(f"{path}: {len(lines)} labels for a model with {classes} classes")
    return lines
