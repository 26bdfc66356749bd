"""What a ``manualbp`` run prints: the progress (a bar on a terminal, ``EpochLines`` elsewhere), the model summary
and the results, not Lightning's notices."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar

# Lightning's one-line notices (rank_zero_info: "GPU available", "Seed set to", the "💡 Tip" adverts, "The
# following callbacks returned in `LightningModule.configure_callbacks` will override ...", checkpoint
# restoring) go to these loggers; the model summary and the progress bar do not.
_NOTICES = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
)

# Warnings a run would print that are no fault of the user's options.
_WARNINGS = (
    # the default logger is the CSV logger when TensorBoard is not installed, as the README says
    r"Starting from v1.9.0, `tensorboardX` has been removed",
    # Lightning's own use of a torch API deprecated in torch 2.10
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the command chooses the optimizer with --optimizer, which replaces the model's default on purpose
    r"`\w+\.configure_optimizers` will be overridden by `\w+\.configure_optimizers`",
    # the test after a resumed fit may load the best checkpoint from the earlier run's folder, whose checkpoint
    # callbacks' states name that folder (the fit is over: nothing is lost)
    r"The dirpath has changed from",
)


@contextmanager
def quiet_run() -> Iterator[None]:
    """Within the block, Lightning's notices and the warnings in ``_WARNINGS`` are not printed."""
    notices = [logging.getLogger(name) for name in _NOTICES]
    levels = [logger.level for logger in notices]
    for logger in notices:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(notices, levels):
            logger.setLevel(level)


class EpochLines(ProgressBar):
    """A fit's progress as one plain line per epoch, for a stdout that is not a terminal (a log file, CI), where a
    progress bar writes carriage returns and cursor codes: ``Epoch 3: train_loss=0.1234 val_loss=0.0987
    val_acc=0.9722``, the metrics the bar would show. An epoch's line is printed once the epoch is over, when the
    next one starts or the fit ends: the module's own ``on_train_epoch_end`` logs (DP-SGD's ``epsilon``) arrive after
    the callbacks'."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._ended: int | None = None  # the epoch whose line is due

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_ended(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_ended(trainer, pl_module)

    def _print_ended(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ended is None or not self._enabled:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(f"{name}={_number(value)}" for name, value in metrics.items() if name != "v_num")
        print(f"Epoch {self._ended}: {shown}", flush=True)
        self._ended = None


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
