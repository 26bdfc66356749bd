"""Test accuracy of the ``manualbp fit`` runs of the README's tables, both backends, with their training time.

Each row is one ``manualbp fit`` in a new Python process (``manualbp.cli.main``, as the command runs), logging
into a temporary ``--trainer.default_root_dir``; the seed (0), the optimizer and the batch size are the
command's defaults:

* ``digits``: ``manualbp fit`` (the MLP with 800 hidden units on scikit-learn's 8x8 digits, 20 epochs), and with
  ``--model.backend=autograd``;
* ``mnist-lenet5``: ``--data=MNISTDataModule --data.data_dir=DIR --model.arch=lenet5 --trainer.max_epochs=10``,
  both backends;
* ``digits-lstm``: ``--model.arch=lstm --trainer.max_epochs=10`` on the digits (8 steps of 8 pixels, hidden
  state 128, Adam under a one-cycle schedule), both backends: the recurrent rows in seconds rather than minutes;
* ``mnist-lstm``: the same on MNIST (28 steps of 28 pixels), both backends;
* ``mnist-vit``: ``--model.arch=vit --trainer.max_epochs=10`` on MNIST (the vision transformer: 7 x 7 patches,
  width 64, 4 pre-norm blocks of 4 heads, MLP 128; Adam under a one-cycle schedule), both backends.

Recorded per row: ``test_acc`` (the command's own test of its best-``val_acc`` checkpoint, from the run's
``metrics.csv``), ``best_val_acc`` and its epoch, ``fit_seconds`` (from the start of the fit, when Lightning
writes ``config.yaml``, to the end of the last epoch, when it writes ``last.ckpt``: training and validation,
without start-up and the final test), ``wall_seconds`` (the whole process), ``cpu_seconds`` (the CPU time the
process used, user and system: less sensitive than the wall clock to other processes on the cores, though
threads waiting for a core count too), its start ``date`` and the load averages before and after it; ``meta``
names the machine (``_common.machine_meta``) and says whether every row planned ran (``complete``: the JSON is
written after every row, so an interrupted run keeps the rows it finished).

    python experiments/accuracy.py [--rows digits mnist-lenet5 digits-lstm mnist-lstm mnist-vit] [--keep]
                                   [--data-dir ../shared/data/mnist] [--fit-arg=--trainer.max_epochs=1 ...]
                                   [--out experiments/results]

prints a table and writes ``accuracy.json`` into ``--out`` (default: a new temporary folder,
``manualbp-accuracy-*``, so a plain run leaves the tracked results alone; ``--out experiments/results`` updates
them). The MNIST rows read the data from ``--data-dir`` in torchvision's layout and never download it.
``--keep`` keeps the rows of the other groups already in ``--out``'s accuracy.json (each row records its own date
and load), so one group can be measured again, or added, without rerunning the rest.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import machine_meta, output_folder, write_json

#: row group -> (data: "digits" or "mnist", the arguments after ``manualbp fit``); ``{data_dir}`` is --data-dir.
_MNIST = ["--data=MNISTDataModule", "--data.data_dir={data_dir}", "--data.download=false"]
GROUPS: dict[str, tuple[str, list[str]]] = {
    "digits": ("digits", []),
    "mnist-lenet5": ("mnist", [*_MNIST, "--model.arch=lenet5", "--trainer.max_epochs=10"]),
    "digits-lstm": ("digits", ["--model.arch=lstm", "--trainer.max_epochs=10"]),
    "mnist-lstm": ("mnist", [*_MNIST, "--model.arch=lstm", "--trainer.max_epochs=10"]),
    "mnist-vit": ("mnist", [*_MNIST, "--model.arch=vit", "--trainer.max_epochs=10"]),
}
BACKENDS = ("manual", "autograd")


def describe_data(data: str, data_dir: str) -> str:
    """The data of a row in words, with the sizes of its splits as the data module makes them."""
    from manualbp.data import DigitsDataModule, MNISTDataModule

    if data == "digits":
        module, name = DigitsDataModule(), "scikit-learn's 8x8 digits"
    else:
        module = MNISTDataModule(data_dir=data_dir, download=False)
        name = "MNIST"
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    sizes = [len(s) for s in (module.train_set, module.val_set, module.test_set)]
    if data == "mnist":
        name += f", the {sizes[0] + sizes[1]:,} training images of --data-dir"
    return f"{name} ({sizes[0]:,} train / {sizes[1]:,} val / {sizes[2]:,} test)"


def _fit_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-c", "import sys; from manualbp.cli import main; sys.exit(main())", "fit", *args]


def read_run(root: Path) -> dict[str, object]:
    """test_acc, the best val_acc and its epoch from the run's ``metrics.csv``; fit seconds from its file times."""
    (version,) = root.glob("lightning_logs/version_*")
    test_acc, best = None, (-1.0, None)
    with (version / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("test_acc"):
                test_acc = float(row["test_acc"])
            elif row.get("val_acc") and float(row["val_acc"]) > best[0]:
                best = (float(row["val_acc"]), int(row["epoch"]))
    fit_seconds = (version / "checkpoints" / "last.ckpt").stat().st_mtime - (version / "config.yaml").stat().st_mtime
    return {"test_acc": test_acc, "best_val_acc": best[0], "best_epoch": best[1], "fit_seconds": round(fit_seconds, 1)}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_row(group: str, backend: str, data_dir: str, data: str, extra: Sequence[str] = ()) -> dict[str, object]:
    args = [a.format(data_dir=data_dir) for a in GROUPS[group][1]]
    if backend != "manual":
        args.append(f"--model.backend={backend}")
    args += extra
    with tempfile.TemporaryDirectory(prefix="manualbp-accuracy-run-") as root:
        load_before = os.getloadavg()[0]
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        cpu_before = _children_cpu_seconds()
        start = time.perf_counter()
        done = subprocess.run(
            _fit_command([*args, f"--trainer.default_root_dir={root}"]), capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        cpu = _children_cpu_seconds() - cpu_before
        if done.returncode != 0:
            raise SystemExit(f"manualbp fit {shlex.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        measured = read_run(Path(root))
    row = {
        "row": group,
        "backend": backend,
        "data": data,
        "command": shlex.join(["manualbp", "fit", *args]),
        **measured,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "date": date,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(
        f"{group:13s} {backend:9s} test_acc {row['test_acc']:.4f}  fit {row['fit_seconds']:6.1f} s  "
        f"wall {row['wall_seconds']:6.1f} s  cpu {row['cpu_seconds']:6.1f} s  "
        f"(load {row['loadavg_1min'][0]:.2f} -> {row['loadavg_1min'][1]:.2f})",
        flush=True,
    )
    return row


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--data-dir", default="../shared/data/mnist", help="MNIST in torchvision's layout")
    parser.add_argument(
        "--out", type=Path, default=None, help="the folder of accuracy.json (default: a new temporary one)"
    )
    parser.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="one more option for every fit (repeatable), e.g. --fit-arg=--trainer.max_epochs=1 for a smoke test",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the rows of other groups already in --out's accuracy.json"
    )
    opts = parser.parse_args(argv)
    if any(group.startswith("mnist") for group in opts.rows) and not (Path(opts.data_dir) / "MNIST" / "raw").is_dir():
        parser.error(f"no MNIST under --data-dir {opts.data_dir} (expected {opts.data_dir}/MNIST/raw/)")
    data_dir = str(Path(opts.data_dir).resolve())
    meta = machine_meta("accuracy.py", argv, rows=opts.rows, data_dir=data_dir, fit_args=opts.fit_arg)
    path = output_folder(opts.out, "accuracy") / "accuracy.json"
    described = {data: describe_data(data, data_dir) for data in {GROUPS[group][0] for group in opts.rows}}
    rows: list[dict[str, object]] = []
    if opts.keep and path.exists():
        rows = [row for row in json.loads(path.read_text())["rows"] if row["row"] not in opts.rows]
        meta["kept_rows"] = sorted({str(row["row"]) for row in rows})
    planned = len(rows) + len(opts.rows) * len(BACKENDS)
    meta["planned"] = planned
    for group in opts.rows:
        for backend in BACKENDS:
            rows.append(run_row(group, backend, data_dir, described[GROUPS[group][0]], opts.fit_arg))
            meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            meta["complete"] = len(rows) == planned
            write_json(path, {"meta": meta, "rows": rows})  # after every row: an interrupted run keeps what it measured
    return path


if __name__ == "__main__":
    main()
