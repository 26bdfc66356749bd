"""The experiment scripts write the tracked results under experiments/results/ only when asked (``--out``).

Run without ``--out``, each writes into a new temporary folder and prints where; the files under
experiments/results/ are left as they are. (bench.py, bench_per_sample.py and dp_compare.py write only
with ``--json PATH``.)
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
RESULTS = EXPERIMENTS / "results"

#: script -> a tiny run's arguments
RUNS = {
    "animate_learning": ["--steps", "2", "--every", "1", "--hidden", "16"],
    "figures": ["--epochs", "1", "--steps", "2", "--hidden", "16", "--flow-arch", "mlp"],
    "parity": ["--epochs", "1", "--max-steps", "2"],
    "conv_backward_timing": ["--reps", "2"],
    "accuracy": ["--rows", "digits", "--fit-arg=--trainer.max_epochs=1", "--fit-arg=--trainer.limit_train_batches=2"],
}


def _written(result) -> list[Path]:
    """The paths a script's ``main`` returns: one, or a dict holding some."""
    if isinstance(result, Path):
        return [result]
    return [value for value in result.values() if isinstance(value, Path)]


@pytest.mark.parametrize("script", list(RUNS))
def test_a_plain_run_writes_into_a_temporary_folder_and_says_where(script, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes its folders
    monkeypatch.chdir(tmp_path)
    for name in (script, "_common"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    tracked = {path: path.stat().st_mtime_ns for path in RESULTS.iterdir()}

    paths = _written(importlib.import_module(script).main(RUNS[script]))

    assert paths and all(path.is_file() and path.is_relative_to(tmp_path) for path in paths), paths
    printed = capsys.readouterr().out
    assert all(str(path) in printed for path in paths), printed
    assert {path: path.stat().st_mtime_ns for path in RESULTS.iterdir()} == tracked
