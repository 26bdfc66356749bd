"""The tables of measured results, generated from ``experiments/results/*.json`` for the results page."""

from __future__ import annotations

from pathlib import Path


def generate(out: Path) -> None:
    """Write the results tables (Markdown) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
