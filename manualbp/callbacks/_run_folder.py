"""The run folder: where the callbacks write what a run makes (figures, animations).

Lightning gives each run a folder, ``trainer.log_dir``: ``lightning_logs/version_N/`` under
``default_root_dir`` with the CSV or TensorBoard logger (the ``manualbp`` command's default), the ``save_dir``
of another logger. A trainer without a logger (``logger=False``) has no run folder; then everything goes to
``trainer.default_root_dir`` (the current directory unless set), where Lightning itself puts checkpoints in that
case, and the callbacks print the full path they wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


def run_folder(trainer: pl.Trainer) -> Path:
    """``trainer.log_dir``, or ``trainer.default_root_dir`` when there is no logger or it has no folder.

    ``log_dir`` is a broadcast from the global-zero process: call this on every process.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def artefact_path(trainer: pl.Trainer, path: str | Path) -> Path:
    """Where the run writes ``path``: inside ``run_folder(trainer)`` when relative (``learning.gif`` ->
    ``lightning_logs/version_3/learning.gif``), as given when absolute (``~`` expanded). Call on every process."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else run_folder(trainer) / path
