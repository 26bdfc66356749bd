"""Resuming a fit from its checkpoint (``manualbp fit --ckpt_path=...``) continues it exactly, on CPU: the same
weights, the best checkpoint of the whole fit, the recurrent archs' schedule; Ctrl-C says how to resume."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch

from manualbp.cli import main

# A small, fast job whose every step depends on the shuffle order and, through dropout, on the random
# generator; loader workers because they draw their first indices before Lightning sets the epoch.
_JOB = (
    "--model.hidden=[32]",
    "--model.dropout=0.2",
    "--data.num_workers=1",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
)


def _fit(root: Path, epochs: int, *args: str) -> dict:
    main(["fit", f"--trainer.default_root_dir={root}", f"--trainer.max_epochs={epochs}", *_JOB, *args])
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)


def test_two_epochs_equal_one_epoch_and_a_resumed_one(tmp_path):
    straight = _fit(tmp_path / "straight", 2)
    first = tmp_path / "first"
    _fit(first, 1)
    resumed = _fit(tmp_path / "resumed", 2, f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    assert (resumed["epoch"], resumed["global_step"]) == (straight["epoch"], straight["global_step"]) == (1, 8)
    assert list(resumed["state_dict"]) == list(straight["state_dict"])
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    (straight_adam,), (resumed_adam,) = straight["optimizer_states"], resumed["optimizer_states"]
    for index, state in straight_adam["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed_adam["state"][index][key], value), (index, key)


def test_last_ckpt_is_the_latest_epoch_when_that_epoch_is_not_the_best(tmp_path):
    """With lr 0 no epoch improves on the first, so the best checkpoint stays at epoch 0 while last.ckpt must
    move on to every later epoch; resuming from it then continues after the last epoch, not the best."""
    root = tmp_path / "run"
    last = _fit(root, 3, "--optimizer.lr=0")
    (best,) = [p.name for p in (root / "checkpoints").glob("epoch=*.ckpt")]
    assert best.startswith("epoch=0-")
    assert (last["epoch"], last["global_step"]) == (2, 12)
    resumed = _fit(tmp_path / "resumed", 4, "--optimizer.lr=0", f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}")
    assert (resumed["epoch"], resumed["global_step"]) == (3, 16)


class ZeroWeights(pl.Callback):
    """Zero every weight at the start of each epoch from ``from_epoch`` on: those epochs end near chance accuracy,
    below any earlier epoch's."""

    def __init__(self, from_epoch: int) -> None:
        self.from_epoch = from_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.from_epoch:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.zero_()


def test_a_resumed_fit_tests_the_best_checkpoint_of_the_whole_fit(tmp_path, capsys):
    """The best epoch is one before the resume, and none of the resumed epochs comes near it: the test after fit
    must load the first run's best checkpoint, which the resumed run leaves in place."""
    job = [
        f"--trainer.default_root_dir={tmp_path}",
        "--model.hidden=[16]",
        "--optimizer.lr=0.01",
        "--trainer.limit_train_batches=5",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_model_summary=false",
    ]
    assert main(["fit", *job, "--trainer.max_epochs=2", "--test_after_fit=false"]) == 0
    first = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    (best,) = first.glob("epoch=*.ckpt")
    capsys.readouterr()
    sabotage = ["--trainer.callbacks+=tests.test_resume.ZeroWeights", "--trainer.callbacks.from_epoch=2"]
    assert main(["fit", *job, "--trainer.max_epochs=4", *sabotage, f"--ckpt_path={first / 'last.ckpt'}"]) == 0
    assert f"(best checkpoint {best})" in capsys.readouterr().out
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    assert best.is_file() and sorted(p.name for p in resumed.iterdir()) == ["last.ckpt"]


class RecordLR(pl.Callback):
    """Record, in ``lrs``, the learning rate and Adam's beta1 of each optimizer step by its global step."""

    lrs: ClassVar[dict[int, tuple[float, float]]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, index: int
    ) -> None:
        group = trainer.optimizers[0].param_groups[0]
        RecordLR.lrs[trainer.global_step] = (group["lr"], group["betas"][0])


def test_a_recurrent_fit_resumed_with_more_epochs_follows_the_longer_schedule(tmp_path, monkeypatch):
    """The LSTM's one-cycle schedule spans the fit's steps; resumed with more epochs, the fit takes, from the step it
    reached, the lr (and momentum) that a fit of that length takes at that step, instead of stopping with
    ``Tried to step 3 times`` at the shorter schedule's end."""
    monkeypatch.setattr(RecordLR, "lrs", {})
    lstm = [
        "--model.arch=lstm",
        "--model.hidden_size=8",
        "--trainer.limit_train_batches=2",
        "--trainer.callbacks+=tests.test_resume.RecordLR",
    ]
    _fit(tmp_path / "straight", 2, *lstm)
    straight = dict(RecordLR.lrs)
    _fit(tmp_path / "first", 1, *lstm)
    RecordLR.lrs.clear()
    resumed = _fit(tmp_path / "resumed", 2, *lstm, f"--ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    assert resumed["global_step"] == 4 and sorted(RecordLR.lrs) == [2, 3]
    assert RecordLR.lrs == {step: straight[step] for step in (2, 3)}
    assert straight[2] != straight[1]  # the lr moves from step to step


class InterruptOnce(pl.Callback):
    """Press Ctrl-C at the start of epoch ``epoch`` of a fit that did not resume."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and trainer.ckpt_path is None:
            raise KeyboardInterrupt


@pytest.fixture
def _sigint_restored():
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT once it has caught a KeyboardInterrupt
    yield
    signal.signal(signal.SIGINT, handler)


def test_ctrl_c_says_the_fit_was_interrupted_and_how_to_resume(tmp_path, capsys, _sigint_restored):
    args = [
        "fit",
        "--model.hidden=[16]",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=3",
        "--test_after_fit=false",
        "--trainer.callbacks+=tests.test_resume.InterruptOnce",
        "--trainer.callbacks.epoch=2",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    stopped, resume = capsys.readouterr().err.strip().splitlines()[-2:]
    assert stopped == (
        "manualbp: fit interrupted in epoch 2; its checkpoints are intact. Resume it from the newest with:"
    )
    assert shlex.split(resume) == ["manualbp", *args, f"--ckpt_path={last}"]
    assert torch.load(last, weights_only=False)["epoch"] == 1
    assert main(shlex.split(resume)[1:]) == 0
    assert torch.load(str(last).replace("version_0", "version_1"), weights_only=False)["epoch"] == 2


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys, _sigint_restored):
    args = [
        "fit",
        "--model.hidden=[16]",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=tests.test_resume.InterruptOnce",
        "--trainer.callbacks.epoch=0",
    ]
    with pytest.raises(SystemExit):
        main(args)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "manualbp: fit interrupted in epoch 0, before its first checkpoint (the end of an epoch): nothing to resume"
    )
