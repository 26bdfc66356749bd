"""ClassifierModule: a LightningModule training a digit classifier with manual or autograd backprop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from manualbp.functional._validation import check_int
from manualbp.models import Activation, Backend, cross_entropy, lenet5, mlp


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classification of images (N, C, H, W) into ``num_classes`` classes.

    ``backend="manual"`` builds the network from manualbp.nn and takes the loss from manualbp's
    cross entropy, so every gradient of a step comes from a hand-written backward; ``"autograd"``
    builds the identical network (same layer names, same initial weights for the same seed) from
    torch.nn. Logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.
    ``in_shape`` and ``num_classes`` are linked from the data module by the ``manualbp`` command.
    """

    def __init__(
        self,
        arch: Literal["mlp", "lenet5"] = "mlp",
        backend: Backend = "manual",
        hidden: Sequence[int] = (800,),
        activation: Activation = "relu",
        dropout: float = 0.0,
        optimizer: Literal["sgd", "adam"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        _check_hyperparameters(lr, momentum, weight_decay, dropout, num_classes)
        self.save_hyperparameters()
        if arch == "mlp":
            self.net = mlp(hidden, activation, dropout, in_shape, num_classes, backend)
        elif arch == "lenet5":
            self.net = lenet5(in_shape, num_classes, activation, backend)
        else:
            raise ValueError(f"ClassifierModule: arch must be 'mlp' or 'lenet5', got {arch!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"ClassifierModule: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        self.loss_fn = cross_entropy(backend)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.example_input_array = torch.zeros(2, *in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = self.loss_fn(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: torchmetrics.Metric) -> None:
        images, labels = batch
        logits = self(images)
        # sync_dist: under DDP, the mean over every rank's share of the data (accuracy syncs by itself)
        self.log(f"{stage}_loss", self.loss_fn(logits, labels), prog_bar=True, sync_dist=True)
        accuracy(logits, labels)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the state of the random generator of the model's device type, so that a fit resumed from this
        checkpoint draws the same dropout masks as one that never stopped."""
        checkpoint["rng_state"] = {self.device.type: _rng_state(self.device)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When a fit resumes from ``checkpoint`` on the same device type, restore its random generator state;
        loading the weights to test, predict or with ``load_from_checkpoint`` leaves the random generators alone."""
        resuming_fit = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        state = checkpoint.get("rng_state", {}).get(self.device.type)
        if resuming_fit and state is not None:
            _set_rng_state(state, self.device)

    def configure_callbacks(self) -> list[pl.Callback]:
        """Keep the checkpoint with the best validation accuracy (``ckpt_path="best"`` then means it) and
        ``last.ckpt``, the end of the latest epoch, to resume from (``--ckpt_path=.../last.ckpt``); none when
        the trainer's checkpointing is off (``enable_checkpointing=False``)."""
        if not self.trainer.checkpoint_callbacks:
            return []
        return [ModelCheckpoint(monitor="val_acc", mode="max", filename="{epoch}-{val_acc:.4f}", save_last=True)]


def _check_hyperparameters(lr: float, momentum: float, weight_decay: float, dropout: float, num_classes: int) -> None:
    """Reject values the optimizer or the network would only fail on (or silently misuse) later."""
    name = "ClassifierModule"
    if not lr > 0:
        raise ValueError(f"{name}: lr must be positive, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"{name}: momentum must lie in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"{name}: weight_decay must be non-negative, got {weight_decay}")
    if not 0 <= dropout < 1:
        raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
    check_int(name, "num_classes", num_classes, 2)


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that random ops on ``device`` (dropout) draw from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
