"""GradientFlow: per-layer norms of δ, ∂L/∂W and ΔW in the run's logger, the figure, the printed line, the CLI."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins import MixedPrecision

from manualbp.callbacks import GradientFlow
from manualbp.cli import main
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule

PARAMS = ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]


class _Losses(pl.Callback):
    """The first batch, and the training loss of every step."""

    def __init__(self) -> None:
        self.first_batch = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.first_batch = [t.clone() for t in batch]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(callbacks: list[pl.Callback], tmp_path: Path, backend: str = "manual", dropout: float = 0.0, **trainer_args):
    """5 steps of a tiny MLP (8·8 -> 16 -> 10, Adam lr 1e-3) on the bundled digits; returns it and its initial net."""
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=32)
    model = ClassifierModule(backend=backend, hidden=(16,), dropout=dropout, in_shape=data.in_shape)
    model.configure_callbacks = list  # no checkpoints
    initial = copy.deepcopy(model.net)
    trainer = pl.Trainer(
        max_steps=5,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(model, datamodule=data)
    return model, initial


def _rows(folder: Path) -> list[dict[str, str]]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as f:
        return [row for row in csv.DictReader(f) if any(k.startswith("gradflow/") and v for k, v in row.items())]


def test_logs_the_norms_of_each_layer_every_n_steps(tmp_path):
    """The logged norms of step 0 are the ones recomputed here with autograd from the initial weights and batch."""
    losses = _Losses()
    _, initial = _fit([GradientFlow(every_n_steps=2, figure=False), losses], tmp_path)
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    expected = [f"gradflow/{layer}/error_norm" for layer in ("fc1", "out")]
    expected += [f"gradflow/{p}/{kind}" for p in PARAMS for kind in ("grad_norm", "update_norm")]
    for row in rows:
        assert sorted(k for k, v in row.items() if k.startswith("gradflow/") and v) == sorted(expected)

    params = {name: p.detach().clone().requires_grad_() for name, p in initial.named_parameters()}
    images, labels = losses.first_batch
    hidden = F.relu(F.linear(images.flatten(1), params["fc1.weight"], params["fc1.bias"]))
    logits = F.linear(hidden, params["out.weight"], params["out.bias"])
    loss = F.cross_entropy(logits, labels)  # autograd all the way
    grads = dict(zip(PARAMS, torch.autograd.grad(loss, [params[p] for p in PARAMS])))
    delta_out = (logits.detach().softmax(1) - F.one_hot(labels, 10)) / len(labels)  # δ_out = ∂L/∂logits
    delta_fc1 = delta_out @ params["out.weight"].detach()  # the manual fc1 is Linear+ReLU: its output is relu(z)
    adam_first_step = {p: 1e-3 * g / (g.abs() + 1e-8) for p, g in grads.items()}  # m̂ = g, v̂ = g²

    first = {k: float(v) for k, v in rows[0].items() if v}
    assert first["gradflow/out/error_norm"] == pytest.approx(float(delta_out.norm()), rel=1e-5)
    assert first["gradflow/fc1/error_norm"] == pytest.approx(float(delta_fc1.norm()), rel=1e-5)
    for p in PARAMS:
        assert first[f"gradflow/{p}/grad_norm"] == pytest.approx(float(grads[p].norm()), rel=1e-5)
        assert first[f"gradflow/{p}/update_norm"] == pytest.approx(float(adam_first_step[p].norm()), rel=1e-4)


@pytest.mark.parametrize("backend", ["manual", "autograd"])
def test_does_not_change_training_and_removes_its_hooks(tmp_path, backend):
    """Same losses with and without it (dropout on: a random draw of the callback would change the masks)."""
    with_flow, without = _Losses(), _Losses()
    flow = GradientFlow(every_n_steps=1, figure=False)
    model, _ = _fit([flow, with_flow], tmp_path / "with", backend, dropout=0.3)
    _fit([without], tmp_path / "without", backend, dropout=0.3)
    assert with_flow.losses == without.losses
    assert flow.steps == [0, 1, 2, 3, 4]
    layers = ["fc1", "drop1", "out"] if backend == "manual" else ["fc1", "act1", "drop1", "out"]  # torch.nn: ReLU apart
    assert [k.split("/")[1] for k in flow.history[0] if k.endswith("/error_norm")] == layers
    modules = list(model.net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
    assert all(not p._backward_hooks for p in model.net.parameters())


def test_error_norms_are_unscaled_under_a_loss_scaler(tmp_path):
    """With AMP's GradScaler the traced δ is that of the scaled loss (x 1024 here); the logged norm is not."""
    plain, scaled = GradientFlow(every_n_steps=1, figure=False), GradientFlow(every_n_steps=1, figure=False)
    _fit([plain], tmp_path / "fp32", "autograd")
    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    _fit([scaled], tmp_path / "amp", "autograd", plugins=[amp])  # float16 autocast on the CPU: torch.nn layers
    for name, value in plain.history[0].items():
        assert scaled.history[0][name] == pytest.approx(value, rel=1e-3), name


def test_writes_the_figure_into_the_run_folder_and_prints_its_path(tmp_path, capsys):
    _fit([GradientFlow(every_n_steps=2)], tmp_path)
    figure = tmp_path / "lightning_logs" / "version_0" / "gradient_flow.png"
    assert capsys.readouterr().out.splitlines()[-1] == f"GradientFlow: logged 3 steps; figure {figure}"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 300


def test_without_figure_prints_the_count_only(tmp_path, capsys):
    _fit([GradientFlow(every_n_steps=4, figure=False)], tmp_path)
    assert capsys.readouterr().out.splitlines()[-1] == "GradientFlow: logged 2 steps"
    assert not list(tmp_path.glob("**/gradient_flow.png"))


def test_through_the_command_line(tmp_path, capsys):
    status = main(
        [
            "fit",
            "--trainer.callbacks+=GradientFlow",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--model.hidden=[16]",
            "--test_after_fit=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert status == 0
    figure = tmp_path / "lightning_logs" / "version_0" / "gradient_flow.png"
    assert re.search(rf"^GradientFlow: logged 3 steps; figure {re.escape(str(figure))}$", capsys.readouterr().out, re.M)
    assert figure.is_file()
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(float(r["gradflow/fc1.weight/update_norm"]) > 0 for r in rows)


def test_a_recurrent_network_through_the_command_line(tmp_path, arch="lstm"):
    """The output sequence of a recurrent classifier gets no gradient (it reads h_n): no error to draw, no crash."""
    status = main(
        [
            "fit",
            f"--model.arch={arch}",
            "--model.hidden_size=8",
            "--trainer.callbacks+=GradientFlow",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--test_after_fit=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert status == 0
    assert (tmp_path / "lightning_logs" / "version_0" / "gradient_flow.png").is_file()
    assert all(float(r["gradflow/out.weight/update_norm"]) > 0 for r in _rows(tmp_path))


def test_a_module_without_net_is_refused(tmp_path):
    class NoNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[GradientFlow()],
    )
    with pytest.raises(TypeError, match="GradientFlow: NoNet has no `net`"):
        trainer.fit(NoNet(), datamodule=DigitsDataModule(batch_size=32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every_n_steps=0), "every_n_steps must be an integer >= 1"),
        (dict(every_n_steps=2.5), "every_n_steps must be an integer >= 1"),
        (dict(every_n_steps=True), "every_n_steps must be an integer >= 1"),
        (dict(figure="yes"), "figure must be True or False"),
    ],
    ids=["zero-steps", "float-steps", "bool-steps", "figure-not-bool"],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"GradientFlow: {match}"):
        GradientFlow(**kwargs)
