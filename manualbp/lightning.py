"""ClassifierModule: a LightningModule training a digit classifier with manual or autograd backprop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.callbacks import ModelCheckpoint

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
        self.save_hyperparameters()
        if arch == "mlp":
            self.net = mlp(hidden, activation, dropout, in_shape, num_classes, backend)
        elif arch == "lenet5":
            self.net = lenet5(in_shape, num_classes, activation, backend)
        else:
            raise ValueError(f"arch must be 'mlp' or 'lenet5', got {arch!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
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
        self.log(f"{stage}_loss", self.loss_fn(logits, labels), prog_bar=True)
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

    def configure_callbacks(self) -> list[pl.Callback]:
        """Keep the checkpoint with the best validation accuracy (``ckpt_path="best"`` then means it)."""
        return [ModelCheckpoint(monitor="val_acc", mode="max", filename="{epoch}-{val_acc:.4f}")]
