"""ClassifierModule and the `manualbp` command through Lightning, on the bundled digits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.testing import assert_close

from manualbp.cli import main
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.verify import ieee_float32


class _FirstGradients(pl.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
def test_step_zero_gradients_are_identical_across_backends(arch, device):
    """On CUDA in full float32 (no TF32: the two backends reach different convolution kernels, whose TF32
    roundings differ by 1e-3), where the kernels' orders of summation still differ: float32's rounding."""
    grads = {}
    for backend in ("manual", "autograd"):
        pl.seed_everything(0)
        data = DigitsDataModule(batch_size=32)
        model = ClassifierModule(arch=arch, backend=backend, hidden=(64,), in_shape=data.in_shape)
        capture = _FirstGradients()
        trainer = pl.Trainer(
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[capture],
            limit_val_batches=0,
            accelerator=device.type,
            devices=1,
        )
        with ieee_float32():
            trainer.fit(model, datamodule=data)
        grads[backend] = capture.grads
    assert list(grads["manual"]) == list(grads["autograd"])
    tolerance = dict(rtol=1e-4, atol=1e-6) if device.type == "cuda" else {}
    for name in grads["manual"]:
        assert_close(grads["manual"][name], grads["autograd"][name], msg=name, **tolerance)


def _metrics(root: Path) -> list[dict[str, str]]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


def _fit(root: Path, *args: str) -> list[dict[str, str]]:
    main(["fit", f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *args])
    return _metrics(root)


def test_backends_train_alike_through_the_command(tmp_path, capsys, device):
    """One epoch on digits (20 steps): the logged train_loss of the two backends agree to 1e-4 relative (1e-3 on
    CUDA, whose kernels sum in other orders) and val_acc to half a percentage point; the best checkpoint is then
    tested and test_acc printed."""
    runs = {
        backend: _fit(
            tmp_path / backend,
            f"--model.backend={backend}",
            f"--trainer.accelerator={device.type}",
            "--trainer.devices=1",
            "--trainer.max_epochs=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / backend}",
        )
        for backend in ("manual", "autograd")
    }
    losses = {b: [float(r["train_loss"]) for r in rows if r.get("train_loss")] for b, rows in runs.items()}
    assert len(losses["manual"]) == 20
    rtol = 1e-3 if device.type == "cuda" else 1e-4
    assert_close(torch.tensor(losses["manual"]), torch.tensor(losses["autograd"]), rtol=rtol, atol=0)
    val_acc = {b: [float(r["val_acc"]) for r in rows if r.get("val_acc")][-1] for b, rows in runs.items()}
    assert abs(val_acc["manual"] - val_acc["autograd"]) <= 0.005
    assert "test_acc = " in capsys.readouterr().out
    assert list((tmp_path / "manual").glob("lightning_logs/version_0/checkpoints/*.ckpt"))


def test_fast_dev_run_of_lenet5_and_subcommands(tmp_path, capsys, monkeypatch, device):
    monkeypatch.chdir(tmp_path)
    on = [f"--trainer.accelerator={device.type}", "--trainer.devices=1"]
    main(["fit", "--model.arch=lenet5", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false", *on])
    assert "test_acc = " in capsys.readouterr().out
    main(["validate", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false", *on])
    main(["test", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false", *on])


def test_print_config_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    config = capsys.readouterr().out
    assert "class_path: manualbp.data.DigitsDataModule" in config
    assert "backend: manual" in config and "arch: mlp" in config


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in out
