"""With a fixed seed, ``manualbp fit`` on CPU is reproducible: two runs write the same metrics.csv."""

from __future__ import annotations

from pathlib import Path

from manualbp.cli import main

# Small and fast, with everything random in it: weight init, shuffling, dropout, loader workers.
_JOB = (
    "--model.hidden=[32]",
    "--model.dropout=0.2",
    "--data.num_workers=1",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=5",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
)


def _metrics_csv(root: Path, *args: str) -> str:
    """Run ``manualbp fit`` (which tests the best checkpoint afterwards) and return its metrics.csv."""
    main(["fit", *_JOB, "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}", *args])
    return (root / "lightning_logs" / "version_0" / "metrics.csv").read_text()


def test_two_runs_with_one_seed_write_the_same_metrics(tmp_path):
    first = _metrics_csv(tmp_path / "first")
    assert first == _metrics_csv(tmp_path / "second")
    header, *rows = first.splitlines()
    assert header.split(",") == ["epoch", "step", "test_acc", "test_loss", "train_loss", "val_acc", "val_loss"]
    assert len(rows) == 2 * 5 + 2 + 1  # a train_loss per step, val metrics per epoch, test metrics once
    assert first != _metrics_csv(tmp_path / "other_seed", "--seed_everything=1")
