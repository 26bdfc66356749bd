"""Training parity: the manual backend and the autograd backend trained side by side, step by step.

Both networks are built from the same seed (their state dicts are checked equal), get their own
optimizer of the same kind, and in one plain PyTorch loop receive every batch of one seeded, shuffled
DataLoader in turn: batch k goes through the manual network (``manualbp.functional.cross_entropy``),
then through the autograd network (``torch.nn.functional.cross_entropy``), each followed by its
optimizer step. Every step's loss of both is recorded. Any difference comes from floating-point
rounding (different but equivalent kernels in the two backward passes) and from its growth through
training.

Data: scikit-learn's 8x8 digits (``manualbp.data.DigitsDataModule``, offline) by default; with
``--data-dir DIR`` MNIST from DIR in torchvision's layout (``MNISTDataModule(data_dir=DIR, download=False)``).

    python experiments/parity.py [--arch mlp|lenet5|lstm|gru] [--epochs 10] [--optimizer adam|sgd] [--lr 1e-3]
                                 [--batch-size 64] [--data-dir DIR] [--out experiments/results] [--name NAME]

writes ``NAME.csv`` (step, manual_loss, autograd_loss, abs_diff) and ``NAME.png`` (both loss curves, and
their absolute difference on a second, logarithmic y axis) under ``--out`` (default: a new temporary folder,
``manualbp-parity-*``, so a plain run leaves the tracked results alone; ``--out experiments/results`` updates
them), and prints the largest absolute and relative difference and where it wrote. NAME defaults to
``parity`` for the digits run with the mlp and to ``parity_<data>_<arch>`` otherwise, so runs do not overwrite
each other. ``mlp`` is ``mlp(hidden=(800,))``, the ``manualbp fit`` default; ``lstm`` and ``gru`` read the image
row by row with a hidden state of 128, as ``--model.arch=lstm|gru``. Other architectures of
``experiments/_common.py`` (``mlp800x800``) are accepted too.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from _common import ARCHS, BACKENDS, LOSSES, build_pair, make_optimizer, output_folder, train_step


def make_datamodule(data_dir: str | None, batch_size: int, seed: int):
    """DigitsDataModule (data_dir None) or MNISTDataModule reading data_dir without downloading; set up."""
    from manualbp.data import DigitsDataModule, MNISTDataModule

    if data_dir is None:
        dm = DigitsDataModule(batch_size=batch_size, seed=seed)
    else:
        dm = MNISTDataModule(data_dir=data_dir, download=False, batch_size=batch_size, seed=seed)
        dm.prepare_data()
    dm.setup("fit")
    return dm


def train_side_by_side(
    models: dict[str, torch.nn.Module],
    loader: torch.utils.data.DataLoader,
    epochs: int,
    optimizer: str,
    lr: float,
    max_steps: int | None = None,
) -> dict[str, list[float]]:
    """Train both models on the same batches in the same order; return every step's loss per backend.

    The loader is iterated once per epoch and each batch is given to both models, so the shuffling
    (the data module's epoch-seeded sampler) is shared by construction.
    """
    optimizers = {b: make_optimizer(models[b], optimizer, lr) for b in BACKENDS}
    losses: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for model in models.values():
        model.train()
    for _ in range(epochs):
        for x, y in loader:
            for b in BACKENDS:
                losses[b].append(train_step(models[b], optimizers[b], LOSSES[b], x, y).item())
            if max_steps is not None and len(losses["manual"]) >= max_steps:
                return losses
    return losses


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset: torch.utils.data.TensorDataset, batch_size: int = 1000) -> float:
    """Fraction of ``dataset`` classified correctly."""
    model.eval()
    images, labels = dataset.tensors
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)


def differences(manual: Sequence[float], autograd: Sequence[float]) -> dict[str, float]:
    """Largest absolute difference, largest relative difference (|m - a| / |a|), and their steps."""
    abs_diff = [abs(m - a) for m, a in zip(manual, autograd)]
    rel_diff = [d / abs(a) if a != 0 else (0.0 if d == 0 else math.inf) for d, a in zip(abs_diff, autograd)]
    i_abs = max(range(len(abs_diff)), key=abs_diff.__getitem__)
    i_rel = max(range(len(rel_diff)), key=rel_diff.__getitem__)
    return {
        "max_abs_diff": abs_diff[i_abs],
        "max_abs_step": i_abs,
        "max_rel_diff": rel_diff[i_rel],
        "max_rel_step": i_rel,
    }


def write_csv(path: Path, manual: Sequence[float], autograd: Sequence[float]) -> None:
    """Columns step, manual_loss, autograd_loss, abs_diff; losses with full float precision (repr)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "manual_loss", "autograd_loss", "abs_diff"])
        for step, (m, a) in enumerate(zip(manual, autograd)):
            writer.writerow([step, repr(m), repr(a), repr(abs(m - a))])


def plot(path: Path, manual: Sequence[float], autograd: Sequence[float], title: str, steps_per_epoch: int) -> None:
    """Both loss curves on the left axis; |manual - autograd| on a logarithmic right axis (exact zeros,
    which a log axis cannot show, are drawn at the bottom of the axis as markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(len(manual)))
    diff = [abs(m - a) for m, a in zip(manual, autograd)]
    fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    h_manual = ax.plot(steps, manual, color="tab:blue", lw=2.2, alpha=0.8, label="manual backward (manualbp)")
    h_auto = ax.plot(steps, autograd, color="tab:orange", lw=1.2, ls="--", label="autograd (torch.nn)")
    ax.set_xlabel("training step (one batch each; grey lines: epoch boundaries)")
    ax.set_ylabel("training loss (cross entropy)")
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    for epoch_start in range(steps_per_epoch, len(steps), steps_per_epoch):
        ax.axvline(epoch_start, color="grey", lw=0.5, alpha=0.4)

    ax2 = ax.twinx()
    nonzero = [(s, d) for s, d in zip(steps, diff) if d > 0]
    zeros = [s for s, d in zip(steps, diff) if d == 0]
    handles = h_manual + h_auto
    if nonzero:
        # NaN at the exact zeros, so the line breaks there instead of bridging them
        broken = [d if d > 0 else math.nan for d in diff]
        h_diff = ax2.plot(
            steps,
            broken,
            color="tab:red",
            lw=0.6,
            alpha=0.6,
            marker=".",
            ms=3,
            label="|manual − autograd| (right axis)",
        )
        handles += h_diff
        ax2.set_yscale("log")
        low = min(d for _, d in nonzero)
        ax2.set_ylim(low / 10, max(d for _, d in nonzero) * 10)
        if zeros:
            ax2.plot(zeros, [low / 5] * len(zeros), "|", color="tab:red", ms=6, alpha=0.5)
            handles += ax2.plot([], [], "|", color="tab:red", label="exactly equal (right axis, bottom)")
    else:
        ax2.set_ylim(-1, 1)
        handles += ax2.plot(steps, diff, color="tab:red", lw=0.8, label="|manual − autograd| = 0 at every step")
    ax2.set_ylabel("absolute loss difference", color="tab:red")
    ax2.tick_params(axis="y", colors="tab:red")
    ax.legend(handles=handles, loc="upper right", framealpha=0.9)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="mlp", choices=list(ARCHS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (for quick checks)")
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on digits, 128 on MNIST")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout (default: sklearn digits)")
    parser.add_argument("--out", type=Path, default=None, help="folder of the CSV and PNG (default: a new temp one)")
    parser.add_argument("--name", default=None, help="file stem of the outputs (default: see the module docstring)")
    opts = parser.parse_args(argv)
    if opts.epochs < 1 or (opts.max_steps is not None and opts.max_steps < 1):
        parser.error("--epochs and --max-steps must be positive")

    data = "digits" if opts.data_dir is None else "mnist"
    batch_size = opts.batch_size or (64 if data == "digits" else 128)
    name = opts.name or ("parity" if (data, opts.arch) == ("digits", "mlp") else f"parity_{data}_{opts.arch}")
    dm = make_datamodule(opts.data_dir, batch_size, opts.seed)
    models = build_pair(opts.arch, dm.in_shape, seed=opts.seed)
    loader = dm.train_dataloader()
    losses = train_side_by_side(models, loader, opts.epochs, opts.optimizer, opts.lr, opts.max_steps)
    manual, autograd = losses["manual"], losses["autograd"]

    diff = differences(manual, autograd)
    acc = {b: accuracy(models[b], dm.test_set) for b in BACKENDS}
    out = output_folder(opts.out, "parity")
    csv_path, png_path = out / f"{name}.csv", out / f"{name}.png"
    write_csv(csv_path, manual, autograd)
    title = (
        f"Manual vs autograd backward from identical weights: {opts.arch} on {data}, {opts.optimizer} lr {opts.lr:g}, "
        f"batch {batch_size}\n{len(manual)} steps; largest |difference| {diff['max_abs_diff']:.2e}, "
        f"largest relative {diff['max_rel_diff']:.2e}; test accuracy {acc['manual']:.4f} (manual) / "
        f"{acc['autograd']:.4f} (autograd)"
    )
    plot(png_path, manual, autograd, title, len(loader))

    print(f"{opts.arch} on {data}: {len(manual)} steps ({len(loader)} per epoch), {opts.optimizer} lr {opts.lr:g}")
    print(f"largest absolute loss difference {diff['max_abs_diff']:.3e} (step {diff['max_abs_step']})")
    print(f"largest relative loss difference {diff['max_rel_diff']:.3e} (step {diff['max_rel_step']})")
    print(f"final loss {manual[-1]:.6f} (manual) / {autograd[-1]:.6f} (autograd)")
    print(f"test accuracy {acc['manual']:.4f} (manual) / {acc['autograd']:.4f} (autograd)")
    print(f"wrote {csv_path} and {png_path}")
    return {"manual": manual, "autograd": autograd, "accuracy": acc, "csv": csv_path, "png": png_path, **diff}


if __name__ == "__main__":
    main()
