"""``PredictionWriter``: the predictions of ``trainer.predict`` as a CSV file, one row per input."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Write each predicted batch to ``<folder>/predictions.csv`` as it comes.

    ``predict_step`` returns the class probabilities (N, C); a row holds the input's ``index`` in the
    prediction dataset, the ``predicted`` class (the most probable), the ``label`` when the batch carries one
    (``(inputs, labels)``), and ``prob_0`` ... ``prob_<C-1>``. ``folder`` defaults to the run's log folder
    (``trainer.log_dir``); under several processes each rank writes ``predictions_rank<r>.csv``.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.folder = None if folder is None else Path(folder)
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._rows = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = self.folder or Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = folder / name
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._rows = 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probabilities = prediction.detach().float().cpu()
        labels = batch[1].tolist() if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if self._rows == 0:
            header = ["index", "predicted", *(["label"] if labels is not None else [])]
            self._writer.writerow(header + [f"prob_{c}" for c in range(probabilities.shape[1])])
        count = len(probabilities)
        indices = batch_indices if batch_indices is not None else range(self._rows, self._rows + count)
        predicted = probabilities.argmax(dim=1).tolist()
        for row, (index, probs) in enumerate(zip(indices, probabilities.tolist())):
            label = [labels[row]] if labels is not None else []
            self._writer.writerow([index, predicted[row], *label, *(f"{p:.6g}" for p in probs)])
        self._rows += count

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
