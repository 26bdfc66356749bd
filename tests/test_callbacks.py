"""GradientCheckCallback: autograd recomputes the gradients of checked steps while a manual model trains."""

from __future__ import annotations

import csv
import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from manualbp.callbacks import GradientCheckCallback, GradientMismatchError
from manualbp.data import DigitsDataModule
from manualbp.functional.fused import LinearReLUFunction
from manualbp.lightning import ClassifierModule


class _Recorder(pl.Callback):
    """Collects the errors of each checked step (trainer.callback_metrics keeps the last logged value only)."""

    def __init__(self, check: GradientCheckCallback) -> None:
        self.abs_errs: list[float] = []
        self.rel_errs: list[float] = []
        compare = check.compare

        def recording_compare(*args):
            result = compare(*args)  # worst, max_abs, max_rel, max_rel_param
            self.abs_errs.append(result[1])
            self.rel_errs.append(result[2])
            return result

        check.compare = recording_compare


def _fit(check: GradientCheckCallback, max_steps: int = 4, arch: str = "mlp", dropout: float = 0.0, **trainer_args):
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=32)
    model = ClassifierModule(arch=arch, backend="manual", hidden=(32,), dropout=dropout, in_shape=data.in_shape)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-2)
    model.configure_callbacks = list  # no checkpointing
    recorder = _Recorder(check)
    args = dict(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[check, recorder],
    )
    args.update(trainer_args)
    trainer = pl.Trainer(**args)
    trainer.fit(model, datamodule=data)
    return trainer, recorder


@pytest.mark.parametrize(
    "arch, dropout", [("mlp", 0.0), ("mlp", 0.3), ("lenet5", 0.0)], ids=["mlp", "mlp-dropout", "lenet5"]
)
def test_a_correct_manual_model_passes_every_step(arch, dropout):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, recorder = _fit(GradientCheckCallback(every_n_steps=1), arch=arch, dropout=dropout)
    assert [str(w.message) for w in record if "GradientCheckCallback" in str(w.message)] == []
    assert trainer.global_step == 4
    assert len(recorder.abs_errs) == 4
    assert max(recorder.abs_errs) < 1e-5
    assert max(recorder.rel_errs) < 1e-4
    assert float(trainer.callback_metrics["gradcheck/max_abs_err"]) < 1e-5


def test_dropout_masks_must_match_for_the_check_to_pass():
    """The twin replays the batch's random state: without it the dropout masks differ and the check fails."""
    check = GradientCheckCallback(every_n_steps=1, on_mismatch="raise")
    check.on_train_batch_start = lambda trainer, pl_module, batch, batch_idx: (
        setattr(check, "_batch", batch),
        setattr(check, "_rng", None),
    )
    with pytest.raises(GradientMismatchError):
        _fit(check, max_steps=1, dropout=0.5)


def test_prints_one_line_at_the_end_of_fit(capsys):
    check = GradientCheckCallback(every_n_steps=2)
    trainer, recorder = _fit(check, max_steps=4)
    line = capsys.readouterr().out.splitlines()[-1]
    match = re.fullmatch(r"GradientCheckCallback: 2 steps checked, worst relative error (\S+) \((net\.\S+)\)", line)
    assert match, line
    assert float(match[1]) == pytest.approx(max(recorder.rel_errs), rel=0.05) and float(match[1]) < 1e-4
    assert match[2] in dict(trainer.lightning_module.named_parameters())


def test_checks_every_nth_step_and_logs_to_csv(tmp_path):
    logger = CSVLogger(tmp_path)
    _, recorder = _fit(GradientCheckCallback(every_n_steps=3), max_steps=7, logger=logger, log_every_n_steps=1)
    assert len(recorder.abs_errs) == 3  # steps 0, 3, 6
    (path,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradcheck/max_abs_err")]
    assert [int(r["step"]) for r in rows] == [0, 3, 6]
    assert all(float(r["gradcheck/max_abs_err"]) < 1e-5 for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_correct_manual_model_passes_on_cuda():
    """On CUDA torch's fused dropout draws other masks than manualbp's: the twin's dropout replays manualbp's draw."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, recorder = _fit(GradientCheckCallback(every_n_steps=1), dropout=0.3, accelerator="gpu", devices=1)
    assert [str(w.message) for w in record if "GradientCheckCallback" in str(w.message)] == []
    assert len(recorder.abs_errs) == 4 and max(recorder.abs_errs) < 1e-5


def _plant_wrong_linear_relu_backward(monkeypatch, factor: float = 1.01) -> None:
    """Scale every gradient of the fused Linear+ReLU (the manual mlp's hidden layer) by ``factor``."""
    right = LinearReLUFunction.backward

    def wrong(ctx, grad_out):
        return tuple(None if grad is None else grad * factor for grad in right(ctx, grad_out))

    monkeypatch.setattr(LinearReLUFunction, "backward", staticmethod(wrong))


def test_a_planted_wrong_gradient_raises_naming_the_parameter(monkeypatch):
    _plant_wrong_linear_relu_backward(monkeypatch)
    with pytest.raises(GradientMismatchError, match=r"net\.fc1\.(weight|bias)") as error:
        _fit(GradientCheckCallback(every_n_steps=1, on_mismatch="raise"), max_steps=2)
    assert "at step 0" in str(error.value) and "max abs error" in str(error.value)


def test_a_planted_wrong_gradient_warns_at_each_checked_step(monkeypatch):
    _plant_wrong_linear_relu_backward(monkeypatch)
    with pytest.warns(UserWarning, match=r"net\.fc1\.(weight|bias)") as record:
        trainer, recorder = _fit(GradientCheckCallback(every_n_steps=2), max_steps=4)
    mismatches = [w for w in record if "GradientCheckCallback" in str(w.message)]
    assert len(mismatches) == 2 and "at step 2" in str(mismatches[1].message)
    assert trainer.global_step == 4  # training went on
    assert min(recorder.abs_errs) > 1e-4
    assert min(recorder.rel_errs) == pytest.approx(0.01, rel=1e-3)  # the planted 1% shows as 1% relative error


def test_the_planted_bug_is_gone_after_the_test():
    _, recorder = _fit(GradientCheckCallback(every_n_steps=1, on_mismatch="raise"), max_steps=1)
    assert recorder.abs_errs[0] < 1e-5


def test_a_custom_reference_loss_is_used():
    class Halved(GradientCheckCallback):
        def reference_loss(self, pl_module, twin, batch):
            return 0.5 * super().reference_loss(pl_module, twin, batch)

    with pytest.raises(GradientMismatchError, match=r"net\.(fc1|out)\.(weight|bias)"):
        _fit(Halved(every_n_steps=1, on_mismatch="raise"), max_steps=1)


def test_gradient_accumulation_is_refused():
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        _fit(GradientCheckCallback(), max_steps=1, accumulate_grad_batches=2)


def test_a_module_without_net_is_refused():
    class NoNet(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[GradientCheckCallback()],
    )
    with pytest.raises(TypeError, match="has no `net`"):
        trainer.fit(NoNet(), datamodule=DigitsDataModule(batch_size=32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),
        ({"every_n_steps": True}, "every_n_steps"),
        ({"tolerance": 0}, "tolerance"),
        ({"tolerance": -1e-4}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"tolerance": "1e-4"}, "tolerance"),
        ({"on_mismatch": "ignore"}, "on_mismatch"),
    ],
    ids=["n-zero", "n-float", "n-bool", "tol-zero", "tol-negative", "tol-nan", "tol-str", "on-mismatch"],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradientCheckCallback(**kwargs)
