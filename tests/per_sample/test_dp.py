"""DP-SGD training: ``ClassifierModule(dp=...)`` and ``--model.dp.*`` of the ``manualbp`` command, on digits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from opacus.accountants import RDPAccountant
from torch.testing import assert_close

from manualbp.cli import command, main
from manualbp.data import DigitsDataModule
from manualbp.functional import cross_entropy
from manualbp.lightning import ClassifierModule
from manualbp.per_sample import DifferentialPrivacy, add_noise


class _Step(pl.Callback):
    """The weights before the first step, its batch, and p.grad as the optimizer took it."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.weights = {n: p.detach().clone() for n, p in module.net.named_parameters()}
        self.batch = batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.grads = {n: p.grad.detach().clone() for n, p in module.net.named_parameters()}


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # σ = 0: ε is infinite
@pytest.mark.parametrize("net", [dict(hidden=(16,)), dict(arch="gru", hidden_size=8)], ids=["mlp", "gru"])
def test_a_step_is_the_clipped_sum_over_the_expected_batch_size(net):
    """Noise off (σ = 0): p.grad = Σ_n clip(∇ℓ_n) / B, B the expected batch size of the Poisson loader; for a
    recurrent arch too, whose default clipping of the batch's gradient DP-SGD leaves out."""
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=32)
    model = ClassifierModule(**net, in_shape=data.in_shape, dp=DifferentialPrivacy(0.0, 0.5))
    step = _Step()
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[step],
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    images, labels = step.batch
    reference = ClassifierModule(**net, in_shape=data.in_shape).net
    reference.load_state_dict(step.weights)
    params = list(reference.parameters())
    rows = [
        torch.autograd.grad(cross_entropy(reference(images[n : n + 1]), labels[n : n + 1]), params)
        for n in range(len(labels))
    ]
    norms = torch.stack([torch.cat([g.flatten() for g in row]).norm() for row in rows])
    factors = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    expected_batch = int(len(data.train_set) / len(data.train_dataloader()))
    for i, name in enumerate(step.weights):
        expected = sum(f * row[i] for f, row in zip(factors, rows)) / expected_batch
        assert_close(step.grads[name], expected, rtol=1e-4, atol=1e-6, msg=name)
    assert vars(data).get("train_dataloader") is None  # the data module's own loader is back


def _metrics(root: Path) -> list[dict[str, str]]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_command_logs_the_privacy_spent_by_opacus_accounting(tmp_path, capsys):
    main(
        [
            "fit",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.max_epochs=2",
            "--model.hidden=[16]",
            "--model.dp.noise_multiplier=1.2",
            "--model.dp.max_grad_norm=1.0",
            "--model.dp.delta=1e-4",
        ]
    )
    epsilons = [float(r["epsilon"]) for r in _metrics(tmp_path) if r.get("epsilon")]
    data = DigitsDataModule()
    data.setup("fit")
    steps = len(data.train_dataloader())  # Poisson sampling at q = 1 / steps: steps batches per epoch
    accountant = RDPAccountant()
    expected = []
    for _ in range(2):
        for _ in range(steps):
            accountant.step(noise_multiplier=1.2, sample_rate=1 / steps)
        expected.append(accountant.get_epsilon(1e-4))
    assert_close(torch.tensor(epsilons), torch.tensor(expected), rtol=1e-5, atol=0)
    assert "test_acc" in capsys.readouterr().out  # the best checkpoint (dp in its hyperparameters) was tested


def test_the_command_parses_dp():
    args = ["--model.dp.noise_multiplier=0.5", "--model.dp.max_grad_norm=2", "--trainer.logger=false"]
    cli = command(args, run=False)
    assert cli.model._dp.settings == DifferentialPrivacy(0.5, 2.0, 1e-5)
    assert command(["--trainer.logger=false"], run=False).model._dp is None


def test_what_dp_refuses():
    with pytest.raises(ValueError, match="backend='manual'"):
        ClassifierModule(backend="autograd", dp=DifferentialPrivacy(1.0, 1.0))
    with pytest.raises(ValueError, match="max_grad_norm"):
        DifferentialPrivacy(1.0, 0.0)
    with pytest.raises(ValueError, match="delta"):
        DifferentialPrivacy(1.0, 1.0, delta=1.0)
    model = ClassifierModule(hidden=(8,), in_shape=(1, 8, 8), dp=DifferentialPrivacy(1.0, 1.0))
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    with pytest.raises(ValueError, match="gradient_clip_val"):
        trainer.fit(model, datamodule=DigitsDataModule())


def test_add_noise_adds_the_std_and_divides_by_the_expected_batch():
    p = torch.nn.Parameter(torch.zeros(20000))
    p.grad = torch.full_like(p, 8.0)
    torch.manual_seed(0)
    add_noise([p], noise_multiplier=2.0, max_grad_norm=1.5, expected_batch_size=4)
    assert abs(p.grad.mean().item() - 2.0) < 0.02 and abs(p.grad.std().item() - 0.75) < 0.02
