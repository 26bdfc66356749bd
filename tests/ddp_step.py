"""The ``manualbp`` command, run as ``python -m tests.ddp_step ARGS`` by tests/test_distributed.py.

Run as a module so that Lightning's DDP launcher can start the other ranks by running it again; with
``--trainer.callbacks+=tests.ddp_step.RecordFirstStep --trainer.callbacks.out_dir=DIR`` every rank writes
what its first optimizer step saw and did to ``DIR/rank<global rank>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from manualbp.cli import main


def _parameters(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


class RecordFirstStep(pl.Callback):
    """Saves the first training batch this rank saw and its parameters before and after the first step."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, object] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 0:
            images, labels = batch
            self.record = {"images": images.clone(), "labels": labels.clone(), "before": _parameters(pl_module)}
            if getattr(pl_module, "_dp", None) is not None:  # DP-SGD: the global expected batch size it divides by
                self.record["expected_batch_size"] = pl_module._dp.expected_batch_size

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step == 1 and "after" not in self.record:
            self.record["after"] = _parameters(pl_module)
            torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
