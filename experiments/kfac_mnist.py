"""Steps and seconds to 97% validation accuracy on MNIST: SGD, Adam, and SGD preconditioned by K-FAC
(``manualbp.callbacks.KFACPreconditioner``), each trained through ``ClassifierModule`` and the Lightning Trainer.

The data: the training images of ``--data-dir`` (torchvision's layout; the shared subset holds 10,000) split by
``MNISTDataModule`` (split and shuffling seed 0) into training images and ``--val-fraction`` (20%) validation
images, batches of 128; the official test images for one test at the end of each run. The network: ``--arch``
(LeNet-5 by default) on the manual backend, so the loss is manualbp's cross entropy and the curvature context
sees every layer.

The optimizers: SGD with momentum 0.9, Adam, and SGD with momentum 0.9 stepping along the K-FAC preconditioned
gradient (B + λ_B I)⁻¹ G (A + λ_A I)⁻¹ (``KFACPreconditioner``: one Monte-Carlo sample, moving average 0.95,
inverses every 10 steps, damping ``--kfac-damping`` = 0.01; its step in low-curvature directions is about lr/γ
times the gradient, hence its small learning rates). Each learning rate is tuned a little: every candidate of
``LRS`` trains ``--tune-steps`` steps from seed 0's weights, and the one with the best validation accuracy then
(ties: the lower loss; a run that diverges loses) is the optimizer's. With it the optimizer trains ``--seeds``
runs (initial weights and Monte-Carlo draws of seeds 0, 1, ...) of at most ``--max-steps`` steps, validated
every ``--eval-every`` steps; a run stops ``--patience`` validations after it first reaches ``--target``.

Recorded per run: the validation accuracy and loss at every validation with the optimizer step, the training
seconds so far (wall clock of the training batches: forward, backward, preconditioning, optimizer step; the
validations are left out) and the process's CPU seconds; the first step and seconds at which the validation
accuracy reached ``--target`` (None if it never did), the best and the last accuracy, the milliseconds per
step, and the test accuracy of the final weights.

On a machine shared with other processes a run's wall clock moves with their load, so the cost of a step is also
measured apart (``step_time``): ``--timing-blocks`` rounds, each training every optimizer for 30 steps in turn
(no validation), the mean of steps 10-30 (K-FAC's inverses of steps 10 and 20 included); an optimizer's step
time is its fastest round's, the one least disturbed. ``summary``'s ``est_seconds_to_target`` = median steps to
the target x that step time. ``summary`` has each optimizer's medians over its seeds;
``tuning`` every candidate's result. ``meta`` names the machine (``_common.machine_meta``) with the load
averages before and after: on a shared machine the seconds move with the load, the steps do not.

    python experiments/kfac_mnist.py [--arch lenet5] [--data-dir ../shared/data/mnist] [--out experiments/results]
                                     [--seeds 3] [--max-steps 1000] [--tune-steps 100] [--eval-every 10] [--no-tune]

prints a table and writes ``kfac_mnist.json`` and ``kfac_mnist.png`` (validation accuracy against steps and
against training seconds, every run) into ``--out`` (default: a new temporary folder; ``--out
experiments/results`` updates the tracked results). About 5 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from _common import machine_meta, output_folder, write_json

from manualbp.callbacks import KFACPreconditioner
from manualbp.data import MNISTDataModule
from manualbp.lightning import ClassifierModule

#: The learning rates tried for each optimizer (``--no-tune``: ``CHOSEN``'s instead).
LRS: dict[str, list[float]] = {
    "sgd": [0.01, 0.03, 0.1],
    "adam": [1e-3, 3e-3, 1e-2, 3e-2],
    "sgd+kfac": [1e-3, 2e-3, 3e-3, 5e-3, 1e-2],
}
#: What the tuning chose on the run in experiments/results (used with ``--no-tune``).
CHOSEN: dict[str, float] = {"sgd": 0.03, "adam": 0.01, "sgd+kfac": 0.003}
MOMENTUM = 0.9


class Record(pl.Callback):
    """Times the training batches (wall and CPU), records every validation, and stops the fit ``patience``
    validations after the accuracy first reaches ``target``."""

    def __init__(self, target: float, patience: int) -> None:
        self.target, self.patience = target, patience
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.durations: list[float] = []  # each training batch's wall clock
        self.history: list[dict[str, float]] = []
        self.reached: dict[str, float] | None = None
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.durations.append(time.perf_counter() - self._start[0])
        self.seconds += self.durations[-1]
        self.cpu_seconds += time.process_time() - self._start[1]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        point = {
            "step": trainer.global_step,
            "val_acc": round(float(trainer.callback_metrics["val_acc"]), 5),
            "val_loss": _finite(float(trainer.callback_metrics["val_loss"])),
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
        }
        self.history.append(point)
        if self.reached is None and point["val_acc"] >= self.target:
            self.reached = point
        if self.reached is not None and len(self.history) - self.history.index(self.reached) > self.patience:
            trainer.should_stop = True


def _finite(x: float) -> float | None:
    """``x`` rounded, or None where it is not finite (a diverged run's loss; JSON has no NaN)."""
    return round(x, 5) if math.isfinite(x) else None


def make_data(data_dir: str, val_fraction: float) -> MNISTDataModule:
    return MNISTDataModule(data_dir=data_dir, download=False, val_size=val_fraction, batch_size=128, seed=0)


def fit(
    name: str,
    lr: float,
    opts: argparse.Namespace,
    max_steps: int,
    eval_every: int | None,
    record: Record,
    seed: int,
) -> tuple[pl.Trainer, ClassifierModule, MNISTDataModule]:
    """Train ``opts.arch`` from the initial weights of ``seed`` with optimizer ``name`` at ``lr`` for at most
    ``max_steps`` steps, validated every ``eval_every`` steps (None: never), ``record`` watching."""
    pl.seed_everything(seed, verbose=False)
    data = make_data(opts.data_dir, opts.val_fraction)
    model = ClassifierModule(arch=opts.arch, in_shape=data.in_shape)
    params = list(model.parameters())
    if name == "adam":
        model.configure_optimizers = lambda: torch.optim.Adam(params, lr=lr)  # type: ignore[method-assign]
    else:
        model.configure_optimizers = lambda: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)  # type: ignore[method-assign]
    model.configure_callbacks = list  # type: ignore[method-assign]  # no checkpoints
    callbacks: list[pl.Callback] = [record]
    if name == "sgd+kfac":
        callbacks.insert(0, KFACPreconditioner(damping=opts.kfac_damping, kl_clip=opts.kfac_kl_clip))
    trainer = pl.Trainer(
        max_steps=max_steps,
        val_check_interval=eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        limit_val_batches=None if eval_every else 0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data)
    return trainer, model, data


def train(
    name: str, lr: float, opts: argparse.Namespace, max_steps: int, eval_every: int, test: bool, seed: int = 0
) -> dict[str, Any]:
    """One run of optimizer ``name`` at ``lr`` from the initial weights of ``seed``: its validation history, and
    the test accuracy when ``test``."""
    record = Record(opts.target, opts.patience)
    trainer, model, data = fit(name, lr, opts, max_steps, eval_every, record, seed)
    history = record.history
    run: dict[str, Any] = {
        "optimizer": name,
        "lr": lr,
        "seed": seed,
        "steps": trainer.global_step,
        "ms_per_step": round(1000 * record.seconds / max(trainer.global_step, 1), 1),
        "train_seconds": round(record.seconds, 1),
        "train_cpu_seconds": round(record.cpu_seconds, 1),
        "steps_to_target": None if record.reached is None else record.reached["step"],
        "seconds_to_target": None if record.reached is None else record.reached["seconds"],
        "best_val_acc": max(p["val_acc"] for p in history),
        "final_val_acc": history[-1]["val_acc"],
        "history": history,
    }
    if test:
        (result,) = trainer.test(model, datamodule=data, verbose=False)
        run["test_acc"] = round(result["test_acc"], 5)
    return run


def tune(name: str, opts: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    """The learning rate of ``LRS[name]`` with the best validation accuracy after ``--tune-steps`` steps."""
    trials: list[dict[str, Any]] = []
    for lr in LRS[name]:
        try:
            run = train(name, lr, opts, opts.tune_steps, opts.tune_steps, test=False)
        except ValueError as error:  # diverged: the curvature context cannot sample labels from NaN logits
            trials.append({"lr": lr, "val_acc": 0.0, "val_loss": None, "diverged": str(error).splitlines()[0]})
            print(f"  tune {name:9s} lr {lr:<7g} diverged ({type(error).__name__})", flush=True)
            continue
        last = run["history"][-1]
        trials.append(
            {"lr": lr, "val_acc": last["val_acc"], "val_loss": last["val_loss"], "seconds": run["train_seconds"]}
        )
        print(f"  tune {name:9s} lr {lr:<7g} val_acc {last['val_acc']:.4f}  val_loss {last['val_loss']}", flush=True)
    best = max(trials, key=lambda t: (t["val_acc"], -math.inf if t["val_loss"] is None else -t["val_loss"]))
    return float(best["lr"]), trials


def plot(runs: list[dict[str, Any]], step_ms: dict[str, float], target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    colors: dict[str, str] = {}
    for run in runs:
        name = run["optimizer"]
        label = None if name in colors else f"{name} (lr {run['lr']:g})"
        color = colors.setdefault(name, f"C{len(colors)}")
        steps = [p["step"] for p in run["history"]]
        seconds = [p["seconds"] for p in run["history"]]
        typical = [step * step_ms[name] / 1000 for step in steps]
        accs = [p["val_acc"] for p in run["history"]]
        style = {"color": color, "linewidth": 1.2, "alpha": 0.85 if run["seed"] == 0 else 0.4}
        axes[0].plot(steps, accs, label=label, **style)
        axes[1].plot(seconds, accs, **style)
        axes[2].plot(typical, accs, **style)
    xlabels = (
        "optimizer steps",
        "training seconds, measured (wall clock, validation left out)",
        "steps x the optimizer's step time, measured apart (s)",
    )
    for ax, xlabel in zip(axes, xlabels):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    low = min(p["val_acc"] for run in runs for p in run["history"])
    axes[0].set_ylim(max(low, 0.85) - 0.005, 1.0)
    axes[0].legend(loc="lower right", title=f"{max(r['seed'] for r in runs) + 1} seeds each")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="lenet5", choices=["lenet5", "mlp"])
    parser.add_argument("--data-dir", default="../shared/data/mnist", help="MNIST in torchvision's layout")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--patience", type=int, default=5, help="validations to run after reaching --target")
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs per optimizer, from the initial weights of seeds 0, 1, ..."
    )
    parser.add_argument("--tune-steps", type=int, default=100)
    parser.add_argument("--no-tune", action="store_true", help="train with CHOSEN's learning rates, no tuning")
    parser.add_argument("--kfac-damping", type=float, default=1e-2)
    parser.add_argument("--kfac-kl-clip", type=float, default=None, help="KFACPreconditioner's kl_clip (default: off)")
    parser.add_argument("--optimizers", nargs="+", default=list(LRS), choices=list(LRS))
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and figure of --out's JSON")
    parser.add_argument("--timing-blocks", type=int, default=5, help="rounds of the step-time measurement")
    parser.add_argument(
        "--out", type=Path, default=None, help="the folder of the outputs (default: a new temporary one)"
    )
    opts = parser.parse_args(argv)
    if not (Path(opts.data_dir) / "MNIST" / "raw").is_dir():
        parser.error(f"no MNIST under --data-dir {opts.data_dir} (expected {opts.data_dir}/MNIST/raw/)")
    opts.data_dir = str(Path(opts.data_dir).resolve())
    data = make_data(opts.data_dir, opts.val_fraction)
    data.setup("fit")
    sizes = {"train": len(data.train_set), "val": len(data.val_set)}  # type: ignore[arg-type]
    title = f"{opts.arch} on MNIST ({sizes['train']:,} training images): SGD, Adam, SGD + K-FAC"
    if opts.plot_only:
        if opts.out is None:
            parser.error("--plot-only needs --out, the folder of an earlier run's kfac_mnist.json")
        saved = json.loads((opts.out / "kfac_mnist.json").read_text())
        print_table(saved["summary"], saved["meta"]["options"]["target"])
        step_ms = saved["step_time"]["ms"]
        plot(saved["runs"], step_ms, saved["meta"]["options"]["target"], opts.out / "kfac_mnist.png", title)
        return opts.out
    meta = machine_meta(
        "kfac_mnist.py",
        argv,
        arch=opts.arch,
        data=f"MNIST, the training images of {opts.data_dir}: {sizes['train']:,} train / {sizes['val']:,} val, batches of 128",
        target=opts.target,
        max_steps=opts.max_steps,
        eval_every=opts.eval_every,
        patience=opts.patience,
        seeds=opts.seeds,
        timing_blocks=opts.timing_blocks,
        tune_steps=None if opts.no_tune else opts.tune_steps,
        momentum=MOMENTUM,
        kfac={
            "damping": opts.kfac_damping,
            "kl_clip": opts.kfac_kl_clip,
            "ema_decay": 0.95,
            "update_every": 10,
            "mc_samples": 1,
        },
    )
    folder = output_folder(opts.out, "kfac_mnist")
    runs: list[dict[str, Any]] = []
    tuning: dict[str, list[dict[str, Any]]] = {}
    summary: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    for name in opts.optimizers:
        if opts.no_tune:
            lr = CHOSEN[name]
        else:
            lr, tuning[name] = tune(name, opts)
        chosen[name] = lr
        mine = []
        for seed in range(opts.seeds):
            run = train(name, lr, opts, opts.max_steps, opts.eval_every, test=True, seed=seed)
            mine.append(run)
            reached = (
                f"{run['steps_to_target']} steps, {run['seconds_to_target']:.1f} s"
                if run["steps_to_target"] is not None
                else "not reached"
            )
            print(
                f"{name:9s} lr {lr:<7g} seed {seed}  {opts.target:.0%}: {reached:22s} best val "
                f"{run['best_val_acc']:.4f}  final val {run['final_val_acc']:.4f}  test {run['test_acc']:.4f}  "
                f"({run['steps']} steps, {run['ms_per_step']:.0f} ms/step)",
                flush=True,
            )
        runs += mine
        summary.append(summarize(name, lr, mine))
        meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        write_json(folder / "kfac_mnist.json", {"meta": meta, "summary": summary, "tuning": tuning, "runs": runs})
    timing = step_time(chosen, opts)
    for row in summary:
        row["step_ms"] = timing["ms"][row["optimizer"]]
        steps = row["median_steps_to_target"]
        row["est_seconds_to_target"] = None if steps is None else round(steps * row["step_ms"] / 1000, 2)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    saved = {"meta": meta, "summary": summary, "step_time": timing, "tuning": tuning, "runs": runs}
    write_json(folder / "kfac_mnist.json", saved)
    print_table(summary, opts.target)
    plot(runs, timing["ms"], opts.target, folder / "kfac_mnist.png", title)
    return folder


def summarize(name: str, lr: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians over the seeds' runs (steps and seconds to the target over the runs that reached it)."""
    reached = [r for r in runs if r["steps_to_target"] is not None]

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    return {
        "optimizer": name,
        "lr": lr,
        "seeds": len(runs),
        "reached": len(reached),
        "median_steps_to_target": median([r["steps_to_target"] for r in reached]),
        "median_seconds_to_target": median([r["seconds_to_target"] for r in reached]),
        "median_ms_per_step": median([r["ms_per_step"] for r in runs]),
        "median_best_val_acc": median([r["best_val_acc"] for r in runs]),
        "median_final_val_acc": median([r["final_val_acc"] for r in runs]),
        "median_test_acc": median([r["test_acc"] for r in runs]),
        "steps_to_target": [r["steps_to_target"] for r in runs],
        "seconds_to_target": [r["seconds_to_target"] for r in runs],
    }


def print_table(summary: list[dict[str, Any]], target: float) -> None:
    """Medians over the seeds: steps to ``target``, seconds (measured, and steps x the step time measured apart)."""

    def show(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    goal = format(target, ".0%")
    print(
        f"\n{'optimizer':9s} {'lr':>6s} {'reached':>7s} {'steps to ' + goal:>12s} {'s to ' + goal:>8s} "
        f"{'est. s':>7s} {'ms/step':>8s} {'best val':>8s} {'final val':>9s} {'test':>6s}"
    )
    for row in summary:
        print(
            f"{row['optimizer']:9s} {row['lr']:6g} {row['reached']:>3d}/{row['seeds']:<3d} "
            f"{show(row['median_steps_to_target'], 'g'):>12s} {show(row['median_seconds_to_target'], '.1f'):>8s} "
            f"{show(row['est_seconds_to_target'], '.1f'):>7s} {row['step_ms']:8.1f} "
            f"{row['median_best_val_acc']:8.4f} {row['median_final_val_acc']:9.4f} {row['median_test_acc']:6.4f}"
        )


def step_time(chosen: dict[str, float], opts: argparse.Namespace, steps: int = 30) -> dict[str, Any]:
    """Each optimizer's ms per training step (at its learning rate in ``chosen``): ``--timing-blocks`` rounds of
    ``steps`` steps of every optimizer in turn, the mean of steps 10 to ``steps``, the fastest round's."""
    rounds: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(opts.timing_blocks):
        for name, lr in chosen.items():
            record = Record(target=2.0, patience=0)  # never stops early
            fit(name, lr, opts, steps, None, record, seed=0)
            rounds[name].append(round(1000 * statistics.mean(record.durations[10:]), 2))
    return {"ms": {name: min(values) for name, values in rounds.items()}, "rounds": rounds}


if __name__ == "__main__":
    main()
