"""Static figures: learning curves of both backends and gradient flow, trained on the bundled digits.

    python experiments/figures.py                            # learning_curves.png, gradient_flow.png: a new temp folder
    python experiments/figures.py --out experiments/results  # the README's figures
    python experiments/figures.py --epochs 1 --steps 5       # a quick try

Without ``--out`` the PNGs go into a new temporary folder (``manualbp-figures-*``), so a plain run leaves the
tracked ones under experiments/results/ alone; the script prints where it wrote.

* learning_curves.png: ``ClassifierModule(arch="mlp", hidden=(800,))`` (the ``manualbp fit`` default) trained
  with the manual backend and with the autograd backend from the same seed (same initial weights, same
  batches): training loss of every batch (per optimizer step) and validation accuracy after every epoch.
* gradient_flow.png: LeNet-5 (manual backend) on the same data: ‖∂L/∂W_l‖ (the Frobenius norm of each
  layer's weight gradient, read in ``on_before_optimizer_step``) at every step, one line per layer.

The drawing is ``manualbp.viz.plot_learning_curves`` and ``manualbp.viz.plot_gradient_flow``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from _common import output_folder

from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.viz import plot_gradient_flow, plot_learning_curves


class Recorder(pl.Callback):
    """Training loss per step, validation accuracy per epoch, per-layer weight-gradient norms per step."""

    def __init__(self) -> None:
        self.step: list[int] = []
        self.train_loss: list[float] = []
        self.epoch: list[int] = []
        self.val_acc: list[float] = []
        self.grad_steps: list[int] = []
        self.grad_norms: dict[str, list[float]] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.grad_steps.append(trainer.global_step + 1)
        for name, module in pl_module.net.named_modules():
            weight = getattr(module, "weight", None)
            if not list(module.children()) and isinstance(weight, torch.nn.Parameter) and weight.grad is not None:
                self.grad_norms.setdefault(name, []).append(float(weight.grad.norm()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step.append(trainer.global_step)
        self.train_loss.append(float(outputs["loss"]))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.epoch.append(trainer.current_epoch + 1)
            self.val_acc.append(float(trainer.callback_metrics["val_acc"]))


def train(arch: str, backend: str, hidden: tuple[int, ...], epochs: int, steps: int, seed: int) -> Recorder:
    pl.seed_everything(seed, verbose=False)
    data = DigitsDataModule(seed=seed)
    model = ClassifierModule(arch=arch, backend=backend, hidden=hidden, in_shape=data.in_shape)
    model.configure_callbacks = list  # no checkpoints
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        max_steps=steps,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=data)
    return recorder


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[800], help="hidden widths of the MLP")
    parser.add_argument("--flow-arch", choices=["mlp", "lenet5"], default="lenet5", help="model of the gradient flow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: a new temporary one)")
    args = parser.parse_args(argv)
    out = output_folder(args.out, "figures")

    start = time.perf_counter()
    runs = {}
    for backend in ("manual", "autograd"):
        r = train("mlp", backend, tuple(args.hidden), args.epochs, args.steps, args.seed)
        runs[f"{backend} backend"] = dict(step=r.step, train_loss=r.train_loss, epoch=r.epoch, val_acc=r.val_acc)
    manual, auto = runs["manual backend"], runs["autograd backend"]
    gap = max((abs(a - b) / max(abs(b), 1e-12) for a, b in zip(manual["train_loss"], auto["train_loss"])), default=0.0)
    hidden = ",".join(map(str, args.hidden))
    plot_learning_curves(
        runs,
        out / "learning_curves.png",
        title=f"MLP ({hidden}) on digits, seed {args.seed}: manual vs autograd backprop "
        f"(largest relative gap in train loss {gap:.1e})",
    )
    flow = train(args.flow_arch, "manual", tuple(args.hidden), args.epochs, args.steps, args.seed)
    name = "LeNet-5" if args.flow_arch == "lenet5" else f"MLP ({hidden})"
    plot_gradient_flow(
        flow.grad_steps,
        flow.grad_norms,
        out / "gradient_flow.png",
        title=f"Gradient flow: {name}, manual backend, digits (Adam, lr 1e-3)",
        ylabel="‖∂L/∂W_l‖ (weight gradient)",
    )
    summary = {
        "train_loss_max_rel_gap": gap,
        "val_acc": {k: v["val_acc"][-1] if v["val_acc"] else None for k, v in runs.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    paths = {"learning_curves": out / "learning_curves.png", "gradient_flow": out / "gradient_flow.png"}
    print(f"wrote {paths['learning_curves']} and {paths['gradient_flow']}")
    return paths


if __name__ == "__main__":
    main()
