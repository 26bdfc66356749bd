"""How long the verification battery takes, as a user meets it: wall-clock seconds of fresh processes.

    python experiments/verify_timing.py                                  # prints the table
    python experiments/verify_timing.py --out experiments/results/verify_timing.json
    python experiments/verify_timing.py --skip-full                      # without the whole matrix (minutes)

Rows, each one new Python process, timed from start to exit (imports included):

* ``own_function``: the README's ``Cube`` (one sample) through ``manualbp.verify.verify`` with every check, the
  battery a user runs on a Function of their own; and with ``exhaustive=True``;
* ``manualbp verify --op conv2d``: the 17 conv2d cases (the largest family), by default and ``--exhaustive``;
* ``manualbp verify``: every built-in case (skipped with ``--skip-full``).

The machine's load average is recorded before each row: on a shared machine the seconds grow with it. The JSON
holds ``machine`` (CPU, cores, torch), ``meta`` (the same and the date, the load averages at the start and in
``loadavg_after`` at the end, the command: ``_common.machine_meta``) and ``rows``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import cpu_name, machine_meta, write_json

CUBE = """
import torch
from manualbp.verify import verify

class Cube(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

torch.manual_seed(0)
report = verify(Cube.apply, lambda x: x**3, [(torch.randn(3, 4),)], name="cube", exhaustive={exhaustive})
assert report.passed, report
"""


def _timed(name: str, command: list[str]) -> dict[str, object]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    summary = next((line for line in result.stdout.splitlines() if " cases x " in line), "")
    row = {"row": name, "seconds": round(seconds, 1), "load_before": round(load, 2), "summary": summary}
    print(f"{name:45s} {seconds:7.1f} s   (load {load:.2f})  {summary}")
    return row


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="write the rows as JSON here (e.g. experiments/results/verify_timing.json)"
    )
    parser.add_argument("--skip-full", action="store_true", help="leave out the whole matrix")
    args = parser.parse_args(argv)

    meta = machine_meta("verify_timing.py", argv, skip_full=args.skip_full)
    verify_command = [sys.executable, "-c", "import sys; from manualbp.cli import main; sys.exit(main())", "verify"]
    rows = [
        _timed("own_function", [sys.executable, "-c", CUBE.replace("{exhaustive}", "False")]),
        _timed("own_function --exhaustive", [sys.executable, "-c", CUBE.replace("{exhaustive}", "True")]),
        _timed("manualbp verify --op conv2d", [*verify_command, "--op", "conv2d"]),
        _timed("manualbp verify --op conv2d --exhaustive", [*verify_command, "--op", "conv2d", "--exhaustive"]),
    ]
    if not args.skip_full:
        rows.append(_timed("manualbp verify", verify_command))
    write_json(
        args.out,
        {
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__},
            "meta": {**meta, "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "rows": rows,
        },
    )
    return rows


if __name__ == "__main__":
    main()
