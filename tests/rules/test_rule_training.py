"""``--model.rule`` on the command line: the rule's layers train, their fixed matrices are in the checkpoint,
and ``Alignment`` logs each layer's angle to the true gradient."""

from __future__ import annotations

import csv

import pytest
import torch

from manualbp.cli import main
from manualbp.lightning import ClassifierModule

FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--test_after_fit=false",
    "--trainer.enable_progress_bar=false",
]


def test_feedback_alignment_trains_from_the_command_with_its_angles_logged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = [
        "--model.rule=feedback_alignment",
        "--trainer.callbacks+=Alignment",
        "--trainer.callbacks.every_n_steps=1",
    ]
    assert main(["fit", *options, *FAST]) == 0
    (metrics,) = tmp_path.glob("lightning_logs/*/metrics.csv")
    angles = [
        float(row["alignment/fc1.weight/angle"])
        for row in csv.DictReader(metrics.open())
        if row["alignment/fc1.weight/angle"]
    ]
    assert len(angles) == 4 and all(0 < a < 180 for a in angles)
    (last,) = tmp_path.glob("lightning_logs/*/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=False)["state_dict"]
    assert state["net.fc1.feedback_weight"].shape == state["net.fc1.weight"].shape
    assert not torch.equal(state["net.fc1.feedback_weight"], state["net.fc1.weight"])


def test_a_rule_needs_the_manual_backend():
    with pytest.raises(ValueError, match="needs backend='manual'"):
        ClassifierModule(rule="sign_symmetry", backend="autograd")
