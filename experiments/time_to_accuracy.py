"""Seconds and steps for LeNet-5 to reach a test accuracy on MNIST: manual backward against autograd, the way the
MNIST speed records time it (the whole data set preloaded on the device, no data loader).

The data: the training and test images of ``--root`` (torchvision's layout, ``<root>/MNIST/raw/``; the shared
subset holds 10,000 of each), read once with ``torchvision.datasets.MNIST``, scaled to [0, 1] and normalised with
MNIST's mean and standard deviation (0.1307, 0.3081), and moved to ``--device`` as two float32 tensors (and the
labels as int64): from then on nothing crosses from the host. Each epoch is a permutation of the training images
drawn on the device (``torch.randperm`` with a seeded generator there), cut into batches of ``--batch`` (the last,
smaller one dropped).

The network: ``lenet5()`` of ``manualbp.models`` (the ``--model.arch=lenet5`` of ``manualbp fit``), built by both
backends from ``--seed`` (equal state dicts, ``_common.build_pair``), float32 (TF32 as torch's defaults leave it:
cuDNN convolutions in TF32, matmuls not). The optimizer, fixed, no tuning: ``--optimizer adam`` (the default, lr
2e-3) or ``sgd`` (lr 0.05, momentum 0.9, nesterov), each with the backend's own cross entropy.

A run: ``--warmup`` untimed steps first on a throwaway copy of the network (they pay cuDNN's algorithm choice and
the kernels' first loads), then from the seed's weights train up to ``--max-steps`` steps, and every
``--eval-every`` steps evaluate the test accuracy of the whole test set (batches of 2,000, ``torch.no_grad``, eval
mode). The clock: ``time.perf_counter`` around the training steps only, with a device ``synchronize`` before it is
read (each evaluation stops it: the evaluations are not counted, as in the records); ``wall_s`` is the run's whole
time, evaluations included. A run stops at the first evaluation at or above ``--target`` (or at ``--max-steps``, or
when its training seconds pass ``--max-seconds``). Recorded: ``steps_to_target`` and ``seconds_to_target`` (None if
never reached), the best and last accuracy, milliseconds per step, and the curve (step, seconds, accuracy) of every
evaluation. The backends run ``--runs`` times each, alternating which goes first; ``summary`` has each backend's
median seconds and steps to the target and ``time_ratio`` = manual median / autograd median. Both backends do the
same arithmetic from the same weights and batches, so their steps to the target should agree (they may part by an
evaluation: float32 sums in other orders).

    python experiments/time_to_accuracy.py [--root ../shared/data/mnist] [--device auto|cpu|cuda]
                                           [--target 0.97] [--optimizer adam|sgd] [--batch 128] [--eval-every 50]
                                           [--max-steps 3000] [--max-seconds 60] [--runs 1] [--seed 0]
                                           [--train-size N] [--test-size N] [--json PATH]

prints a table and writes the JSON (``meta``, ``summary``, ``runs``) only with ``--json PATH``. On one H100 a
LeNet-5 step takes about a millisecond, so a run is seconds; on 2 CPU cores, about 10 ms a step at batch 128.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import BACKENDS, LOSSES, build_pair, cpu_name, machine_meta, write_json

MEAN, STD = 0.1307, 0.3081
IN_SHAPE = (1, 28, 28)
#: The fixed optimizer settings (``--optimizer``).
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adam": dict(lr=2e-3),
    "sgd": dict(lr=0.05, momentum=0.9, nesterov=True),
}
EVAL_BATCH = 2000


def load_mnist(
    root: str | Path, device: torch.device, train_size: int | None = None, test_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, test_x, test_y) on ``device``: float32 (N, 1, 28, 28) normalised images, int64 labels;
    the first ``train_size`` / ``test_size`` of each when given."""
    import torchvision

    tensors = []
    for train, size in ((True, train_size), (False, test_size)):
        dataset = torchvision.datasets.MNIST(str(root), train=train, download=False)
        images = dataset.data[:size].to(torch.float32).div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
        tensors += [images.to(device), dataset.targets[:size].to(torch.int64).to(device)]
    return tuple(tensors)


def make_optimizer(model: torch.nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), **OPTIMIZERS["adam"])
    return torch.optim.SGD(model.parameters(), **OPTIMIZERS["sgd"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of ``x`` that ``model`` classifies as ``y`` (eval mode, batches of ``EVAL_BATCH``)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), EVAL_BATCH):
        correct += (model(x[start : start + EVAL_BATCH]).argmax(1) == y[start : start + EVAL_BATCH]).sum()
    model.train()
    return correct.item() / len(x)


class Batches:
    """Training batches drawn on the device: each epoch a permutation from a seeded generator there."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch = x, y, batch
        self.generator = torch.Generator(device=x.device).manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.int64, device=x.device)
        self.at = 0
        self.per_epoch = max(1, len(x) // batch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.at % self.per_epoch == 0:
            self.order = torch.randperm(len(self.x), generator=self.generator, device=self.x.device)
        start = (self.at % self.per_epoch) * self.batch
        index = self.order[start : start + self.batch]
        self.at += 1
        return self.x[index], self.y[index]


def train_to_target(backend: str, data: Sequence[torch.Tensor], opts: argparse.Namespace) -> dict[str, Any]:
    """One run of ``backend`` (warm-up, then training with evaluations until the target); returns its record."""
    train_x, train_y, test_x, test_y = data
    device = train_x.device
    loss_fn = LOSSES[backend]
    if opts.warmup:
        throwaway = build_pair("lenet5", IN_SHAPE, seed=opts.seed, device=device)[backend]
        optimizer = make_optimizer(throwaway, opts.optimizer)
        warm = Batches(train_x, train_y, opts.batch, opts.seed + 1)
        for _ in range(opts.warmup):
            x, y = warm.next()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(throwaway(x), y).backward()
            optimizer.step()
        accuracy(throwaway, test_x[:EVAL_BATCH], test_y[:EVAL_BATCH])
        _sync(device)
    model = build_pair("lenet5", IN_SHAPE, seed=opts.seed, device=device)[backend]
    optimizer = make_optimizer(model, opts.optimizer)
    batches = Batches(train_x, train_y, opts.batch, opts.seed)
    curve: list[dict[str, float]] = []
    seconds, step = 0.0, 0
    steps_to_target = seconds_to_target = None
    wall_start = time.perf_counter()
    while step < opts.max_steps and seconds < opts.max_seconds:
        _sync(device)
        start = time.perf_counter()
        for _ in range(min(opts.eval_every, opts.max_steps - step)):
            x, y = batches.next()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
            step += 1
        _sync(device)
        seconds += time.perf_counter() - start
        acc = accuracy(model, test_x, test_y)
        curve.append({"step": step, "seconds": seconds, "accuracy": acc})
        if acc >= opts.target:
            steps_to_target, seconds_to_target = step, seconds
            break
    accuracies = [point["accuracy"] for point in curve]
    return {
        "backend": backend,
        "steps_to_target": steps_to_target,
        "seconds_to_target": seconds_to_target,
        "steps": step,
        "train_seconds": seconds,
        "wall_s": time.perf_counter() - wall_start,
        "ms_per_step": 1e3 * seconds / step if step else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "last_accuracy": accuracies[-1] if accuracies else None,
        "curve": curve,
    }


def summarize(runs: Sequence[dict[str, Any]], backends: Sequence[str]) -> dict[str, Any]:
    """Each backend's medians over its runs (seconds and steps to the target over the runs that reached it),
    and ``time_ratio`` = manual / autograd median seconds when both have one."""
    summary: dict[str, Any] = {}
    for backend in backends:
        mine = [r for r in runs if r["backend"] == backend]
        reached = [r for r in mine if r["seconds_to_target"] is not None]
        summary[backend] = {
            "runs": len(mine),
            "reached": len(reached),
            "median_seconds_to_target": statistics.median(r["seconds_to_target"] for r in reached) if reached else None,
            "median_steps_to_target": statistics.median(r["steps_to_target"] for r in reached) if reached else None,
            "median_ms_per_step": statistics.median(r["ms_per_step"] for r in mine if r["ms_per_step"] is not None)
            if mine
            else None,
        }
    times = [summary.get(b, {}).get("median_seconds_to_target") for b in ("manual", "autograd")]
    summary["time_ratio"] = times[0] / times[1] if None not in times and times[1] else None
    return summary


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("time_to_accuracy.py: --device cuda asked for, but torch.cuda.is_available() is False")
    return torch.device(choice)


def format_table(runs: Sequence[dict[str, Any]], target: float) -> str:
    lines = [f"{'backend':<9} {'steps to ' + format(target, '.0%'):>14} {'s to target':>12} {'ms/step':>8} {'best':>7}"]
    for r in runs:
        steps = r["steps_to_target"] if r["steps_to_target"] is not None else "-"
        secs = f"{r['seconds_to_target']:.3f}" if r["seconds_to_target"] is not None else "-"
        ms = f"{r['ms_per_step']:.3f}" if r["ms_per_step"] is not None else "-"
        best = f"{r['best_accuracy']:.4f}" if r["best_accuracy"] is not None else "-"
        lines.append(f"{r['backend']:<9} {steps!s:>14} {secs:>12} {ms:>8} {best:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/mnist", help="MNIST in torchvision's layout")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--target", type=float, default=0.97, help="test accuracy to reach (default 0.97)")
    parser.add_argument("--optimizer", default="adam", choices=list(OPTIMIZERS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations (default 50)")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="training seconds per run at most")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps on a throwaway copy first")
    parser.add_argument("--runs", type=int, default=1, help="runs per backend, alternating which goes first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None, help="only the first N training images")
    parser.add_argument("--test-size", type=int, default=None, help="only the first N test images")
    parser.add_argument("--json", type=Path, default=None, help="write meta, summary and runs to this JSON file")
    opts = parser.parse_args(argv)
    if min(opts.batch, opts.eval_every, opts.max_steps, opts.runs) < 1 or opts.warmup < 0:
        parser.error("--batch, --eval-every, --max-steps and --runs must be positive, --warmup non-negative")
    if not (Path(opts.root) / "MNIST" / "raw").is_dir():
        parser.error(f"no MNIST under --root {opts.root} (expected {opts.root}/MNIST/raw/)")
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    load_start = time.perf_counter()
    data = load_mnist(opts.root, device, opts.train_size, opts.test_size)
    _sync(device)
    load_s = time.perf_counter() - load_start
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"LeNet-5 on MNIST ({len(data[0]):,} train / {len(data[2]):,} test images, on {device_name}), "
        f"{opts.optimizer} {OPTIMIZERS[opts.optimizer]}, batch {opts.batch}, target {opts.target:.2%}",
        flush=True,
    )
    runs = []
    for index in range(opts.runs):
        order = list(opts.backends) if index % 2 == 0 else list(opts.backends)[::-1]
        for backend in order:
            run = train_to_target(backend, data, opts)
            run["run"] = index
            runs.append(run)
    summary = summarize(runs, opts.backends)
    print(format_table(runs, opts.target))
    if summary["time_ratio"] is not None:
        print(f"time ratio (manual / autograd, median seconds to {opts.target:.0%}): {summary['time_ratio']:.3f}")
    meta = machine_meta(
        "time_to_accuracy.py",
        argv,
        device=device.type,
        device_name=device_name,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        load_s=load_s,
        train_images=len(data[0]),
        test_images=len(data[2]),
        **{k: v for k, v in vars(opts).items() if k not in ("json", "root", "device")},
    )
    result = {"meta": meta, "summary": summary, "runs": runs}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
