"""``manualbp.callbacks.Alignment``: the angle between a rule's weight update and the true gradient, per layer.

A tiny MLP (4·4 -> 32 -> 4 classes) learns a random linear teacher on synthetic data for 60 steps (Adam,
lr 1e-2), seeded, so every number is the same on every run. Under feedback alignment the hidden layer's
angle starts near 90° (B is random) and falls well below it as the output weights align with B; a rule whose
feedback is a new random matrix at every step gives no such alignment and stays near 90°. The output layer,
whose update no rule changes, is at 0°.
"""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import manualbp
from manualbp.callbacks import Alignment
from manualbp.callbacks.alignment import angle
from manualbp.lightning import ClassifierModule
from manualbp.rules import Rule


class FreshRandomFeedback(Rule):
    """dL/dx = G · R with a new random R (W's scale) at every step: feedback that carries nothing to align with."""

    name = "fresh_random_feedback"

    def feedback_matrix(self, weight, feedback_weight):
        return torch.randn_like(weight) * weight.std()


def _fit(rule, tmp_path, steps: int = 60, figure: bool = True, **trainer_args) -> Alignment:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(512, 1, 4, 4, generator=g)
    labels = (images.flatten(1) @ torch.randn(16, 4, generator=g)).argmax(1)
    model = ClassifierModule(hidden=(32,), in_shape=(1, 4, 4), num_classes=4)
    manualbp.convert(model.net, rule=rule)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-2)
    model.configure_callbacks = list  # no checkpoints
    callback = Alignment(every_n_steps=5, figure=figure)
    trainer = pl.Trainer(
        max_steps=steps,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback],
        **trainer_args,
    )
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(images, labels), batch_size=32))
    return callback


def test_feedback_alignment_aligns_and_fresh_random_feedback_does_not(tmp_path):
    aligned = _fit("feedback_alignment", tmp_path / "fa")
    assert aligned.steps == list(range(0, 60, 5))
    hidden = [h["alignment/fc1.weight/angle"] for h in aligned.history]
    output = [h["alignment/out.weight/angle"] for h in aligned.history]
    assert max(output) < 1e-3  # the last layer's update is backprop's
    assert all(a < 90 for a in hidden), hidden
    assert hidden[-1] < 60 and hidden[-1] < hidden[0] - 25, hidden
    assert sum(hidden[-4:]) / 4 < sum(hidden[:4]) / 4 - 15, hidden  # falling, not one lucky step

    random = [h["alignment/fc1.weight/angle"] for h in _fit(FreshRandomFeedback(), tmp_path / "random").history]
    assert min(random) > 70 and sum(random) / len(random) > 85, random

    (path,) = (tmp_path / "fa").glob("**/metrics.csv")
    with path.open() as f:
        logged = [
            float(row["alignment/fc1.weight/angle"])
            for row in csv.DictReader(f)
            if row.get("alignment/fc1.weight/angle")
        ]
    assert logged == hidden


@pytest.mark.parametrize("accumulate", [1, 3])
def test_backprop_is_at_zero_degrees(tmp_path, accumulate):
    """Also with gradient accumulation: the true gradient is summed over the step's micro-batches, as the rule's."""
    callback = _fit("backprop", tmp_path, steps=6, accumulate_grad_batches=accumulate)
    assert callback.steps == [0, 5] and all(angle < 1e-3 for h in callback.history for angle in h.values()), (
        callback.history
    )


def _last_angles(callback: Alignment) -> str:
    return ", ".join(f"{name.split('/')[1]} {value:.1f}°" for name, value in callback.history[-1].items())


def test_writes_the_figure_into_the_run_folder_and_prints_its_path(tmp_path, capsys):
    callback = _fit("feedback_alignment", tmp_path, steps=10)
    figure = tmp_path / "lightning_logs" / "version_0" / "alignment.png"
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == f"Alignment: logged 2 steps; at step 5: {_last_angles(callback)}; figure {figure}"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 300


def test_without_figure_prints_the_angles_only(tmp_path, capsys):
    callback = _fit("feedback_alignment", tmp_path, steps=10, figure=False)
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == f"Alignment: logged 2 steps; at step 5: {_last_angles(callback)}"
    assert not list(tmp_path.glob("**/*.png"))
    with pytest.raises(ValueError, match="figure"):
        Alignment(figure="yes")


def test_angle():
    a = torch.tensor([1.0, 0.0])
    assert angle(a, torch.tensor([0.0, 2.0])) == 90.0
    assert abs(angle(a, torch.tensor([1.0, 1.0])) - 45.0) < 1e-9
    assert angle(a, -a) == 180.0 and angle(a, torch.zeros(2)) != angle(a, torch.zeros(2))  # nan
