"""DP-SGD on MNIST: manualbp's (``manualbp fit --model.dp...``) against Opacus's own ``PrivacyEngine``.

The manualbp run is the ``manualbp`` command (Lightning; per-sample clipping inside the hand-written backward):

    manualbp fit --data=MNISTDataModule --data.data_dir=../shared/data/mnist --trainer.max_epochs=10 \\
        --model.dp.noise_multiplier=1.0 --model.dp.max_grad_norm=1.0 --model.dp.delta=1e-5 --model.dp.seed=0 \\
        --trainer.default_root_dir=RUN_DIR

This script trains the same network the same way with Opacus: ``manualbp.models.mlp()`` (Flatten, Linear
784->800, ReLU, Linear 800->10) built by torch.nn from seed 0 (the manual run's initial weights: the command
seeds 0 before building its model, and both backends initialise alike), the same ``MNISTDataModule`` (the same
training/validation split and test set), Adam with lr 1e-3, batch 128 turned into Poisson sampling with
q = 1 / batches per epoch, noise multiplier 1.0, clipping norm 1.0, δ = 1e-5, 10 epochs, Opacus's RDP
accountant; ``PrivacyEngine.make_private(..., grad_sample_mode="hooks")``. Opacus gets the command's batches
(manualbp's ``PoissonSampler`` with the data module's seed, step t drawing batch t; ``poisson_sampling=False``
keeps Opacus from replacing it) and its noise (a generator seeded ``--seed``, as ``--model.dp.seed``), so the
two runs differ only by rounding. Like the command, it tests the weights of the epoch with the best validation
accuracy, and reports the last epoch's test accuracy too.

With ``--manual-run RUN_DIR`` (the manualbp run's ``default_root_dir``) it reads that run's ``metrics.csv``
(ε per epoch, val_acc, the test_acc of its best checkpoint), tests its ``last.ckpt``, and writes both side by
side (``--reuse-opacus JSON`` takes the Opacus side from an earlier output instead of training again):

    python experiments/dp_compare.py --data-dir ../shared/data/mnist --manual-run /tmp/manual_dp \\
        --json experiments/results/dp_compare_mnist.json

``--fit-manual`` runs that ``manualbp fit`` first (in a new process, into ``--manual-run`` or a new temporary
folder), so one command makes both sides:

    python experiments/dp_compare.py --data-dir ../shared/data/mnist --fit-manual \\
        --json experiments/results/dp_compare_mnist.json

The JSON holds ``settings``, ``opacus``, ``manualbp`` and ``meta`` (the machine, the date, the load averages
before and after, the command; ``_common.machine_meta``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine_meta

from manualbp.data import MNISTDataModule
from manualbp.models import mlp
from manualbp.per_sample import PoissonSampler


def evaluate(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train()
    return correct / total


def train_opacus(args: argparse.Namespace) -> dict:
    from opacus import PrivacyEngine

    data = MNISTDataModule(data_dir=args.data_dir, download=False)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    torch.manual_seed(args.seed)
    model = mlp(backend="autograd")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    engine = PrivacyEngine(accountant="rdp")
    loader = data.train_dataloader()
    steps_taken = 0
    sampler = PoissonSampler(
        len(loader.dataset), 1 / len(loader), len(loader), lambda: steps_taken, seed=loader.generator.initial_seed()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, train_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=torch.utils.data.DataLoader(loader.dataset, batch_sampler=sampler),
            noise_multiplier=args.noise_multiplier,
            max_grad_norm=args.max_grad_norm,
            poisson_sampling=False,
            noise_generator=torch.Generator().manual_seed(args.seed),
            grad_sample_mode="hooks",
        )
    epochs, best, best_state = [], -1.0, None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps_taken += 1
        val_acc = evaluate(model, data.val_dataloader())
        epsilon = engine.get_epsilon(args.delta)
        epochs.append({"epoch": epoch, "val_acc": val_acc, "epsilon": epsilon})
        print(f"opacus epoch {epoch}: val_acc {val_acc:.4f} epsilon {epsilon:.3f}", flush=True)
        if val_acc > best:
            best, best_state = val_acc, copy.deepcopy(model._module.state_dict())
    seconds = time.perf_counter() - start
    last_test = evaluate(model, data.test_dataloader())
    model._module.load_state_dict(best_state)
    best_test = evaluate(model, data.test_dataloader())
    return {
        "test_acc_best_val_epoch": best_test,
        "test_acc_last_epoch": last_test,
        "epsilon": epochs[-1]["epsilon"],
        "train_seconds": seconds,
        "epochs": epochs,
    }


def read_manual_run(run_dir: Path, data_dir: str) -> dict:
    """ε and val_acc per epoch and the test_acc of the best checkpoint from the manualbp run's metrics.csv (its
    latest version), the test accuracy of its last checkpoint (evaluated here), and its fit's wall time (from
    the times its files were written: config.yaml at the start, last.ckpt at the end of the last epoch)."""
    from manualbp.lightning import ClassifierModule

    versions = run_dir.glob("lightning_logs/version_*/metrics.csv")
    metrics = sorted(versions, key=lambda p: int(p.parent.name.split("_")[1]))[-1]
    last = metrics.parent / "checkpoints" / "last.ckpt"
    data = MNISTDataModule(data_dir=data_dir, download=False)
    data.setup("test")
    model = ClassifierModule.load_from_checkpoint(last, map_location="cpu")
    last_test = evaluate(model, data.test_dataloader())
    seconds = last.stat().st_mtime - (metrics.parent / "config.yaml").stat().st_mtime
    epochs: dict[int, dict] = {}
    test_acc = None
    with metrics.open() as f:
        for row in csv.DictReader(f):
            if row.get("test_acc"):
                test_acc = float(row["test_acc"])
                continue
            epoch = epochs.setdefault(int(row["epoch"]), {"epoch": int(row["epoch"])})
            for key in ("val_acc", "epsilon"):
                if row.get(key):
                    epoch[key] = float(row[key])
    listed = [epochs[k] for k in sorted(epochs)]
    return {
        "metrics_csv": str(metrics),
        "test_acc_best_val_epoch": test_acc,
        "test_acc_last_epoch": last_test,
        "epsilon": listed[-1].get("epsilon"),
        "train_seconds_from_file_times": seconds,
        "epochs": listed,
    }


def fit_manual(args: argparse.Namespace, run_dir: Path) -> None:
    """The manualbp side: ``manualbp fit --model.dp...`` on the same data and settings, logging into ``run_dir``."""
    command = [
        "fit",
        "--data=MNISTDataModule",
        f"--data.data_dir={args.data_dir}",
        "--data.download=false",
        f"--trainer.max_epochs={args.epochs}",
        f"--model.dp.noise_multiplier={args.noise_multiplier}",
        f"--model.dp.max_grad_norm={args.max_grad_norm}",
        f"--model.dp.delta={args.delta}",
        f"--model.dp.seed={args.seed}",
        f"--seed_everything={args.seed}",
        f"--trainer.default_root_dir={run_dir}",
    ]
    if args.lr != 1e-3:  # the command's default optimizer is Adam with lr 1e-3
        command += ["--optimizer=Adam", f"--optimizer.lr={args.lr}"]
    print(f"manualbp {shlex.join(command)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from manualbp.cli import main; sys.exit(main())", *command],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the manualbp run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manual-run", type=Path, default=None, help="default_root_dir of the manualbp DP run")
    parser.add_argument("--reuse-opacus", type=Path, default=None, help="take the Opacus result from this JSON")
    parser.add_argument(
        "--fit-manual",
        action="store_true",
        help="run the manualbp fit first (into --manual-run, or a temporary folder)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    meta = machine_meta("dp_compare.py", argv)
    if args.fit_manual:
        if args.manual_run is None:
            args.manual_run = Path(tempfile.mkdtemp(prefix="manualbp-dp_compare-"))
        fit_manual(args, args.manual_run)
    skip = ("json", "manual_run", "reuse_opacus", "fit_manual")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in skip}}
    result["settings"]["manual_run"] = str(args.manual_run) if args.manual_run else None
    if args.reuse_opacus is not None:  # an earlier run's Opacus result, not trained again
        result["opacus"] = json.loads(args.reuse_opacus.read_text())["opacus"]
    else:
        result["opacus"] = train_opacus(args)
    if args.manual_run is not None:
        result["manualbp"] = read_manual_run(args.manual_run, args.data_dir)
    result["meta"] = {**meta, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
