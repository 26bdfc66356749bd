"""Resuming a fit from its checkpoint (``manualbp fit --ckpt_path=...``) continues it exactly, on CPU."""

from __future__ import annotations

from pathlib import Path

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
