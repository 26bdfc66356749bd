"""Film backpropagation while an MLP learns the bundled 8x8 digits: a GIF of the four steps on one digit.

    python experiments/animate_learning.py             # 10 epochs (200 steps), 51 frames, 1.6 MB, about 40 s on 2 cores
    python experiments/animate_learning.py --out experiments/results/learning.gif   # the README's GIF
    python experiments/animate_learning.py --steps 10 --every 1                      # a quick try

Without ``--out`` the GIF goes into a new temporary folder (``manualbp-animate_learning-*``), so a plain run
leaves the tracked experiments/results/learning.gif alone; the script prints where it wrote.

Trains ``ClassifierModule(arch="mlp", hidden=(64,), backend="manual")`` (Adam, lr 1e-3, batch 64, seed 0) on
``DigitsDataModule`` with Lightning and ``manualbp.callbacks.LearningAnimation`` filming the first 5 of the
training set. The same callback works in any run of the ``manualbp`` command:

    manualbp fit --trainer.callbacks+=LearningAnimation      # lightning_logs/version_N/learning.gif
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import output_folder

from manualbp.callbacks import LearningAnimation
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (20 steps each)")
    parser.add_argument("--steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden widths of the MLP")
    parser.add_argument("--backend", choices=["manual", "autograd"], default="manual")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=None, help="a frame every N steps (default: about --frames)")
    parser.add_argument("--frames", type=int, default=60, help="at most this many frames")
    parser.add_argument("--digit", type=int, default=5)
    parser.add_argument("--fps", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="the GIF (default: in a new temp folder)")
    args = parser.parse_args(argv)
    out = args.out or output_folder(None, "animate_learning") / "learning.gif"

    pl.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(seed=args.seed)
    model = ClassifierModule(arch="mlp", backend=args.backend, hidden=tuple(args.hidden), in_shape=data.in_shape)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=args.lr)
    model.configure_callbacks = list  # no checkpoints
    animation = LearningAnimation(
        path=str(out.resolve()), every_n_steps=args.every, max_frames=args.frames, digit=args.digit, fps=args.fps
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        max_steps=args.steps,
        callbacks=[animation],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    size = out.stat().st_size
    print(
        f"{out}: {min(len(animation.frames), args.frames)} frames, {size / 1e6:.2f} MB; "
        f"{trainer.global_step} steps, val_acc {val['val_acc']:.4f}, {time.perf_counter() - start:.1f} s"
    )
    return out


if __name__ == "__main__":
    main()
