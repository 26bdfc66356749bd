"""The cost of DP-SGD's ``secure_mode`` against the default noise, on mlp(800, 800) (1.28M parameters).

    python experiments/bench_dp_noise.py [--reps 30] [--threads N] [--json experiments/results/bench_dp_noise.json]

Times, interleaved in one process, ``--reps`` repetitions each after one warm-up call (median and best, ms):
the noise alone (``add_noise`` on zero gradients), reading its bytes from ``os.urandom`` (32 a parameter: 4 draws
of 8 bytes), and a whole DP-SGD step (forward, ``clip_per_sample`` backward, ``add_noise``, SGD) at batch 32
and 128, each with the default noise (torch's generator) and with ``secure_mode``. On a shared machine take the
best: the median counts the other processes too.

Prints a table; with ``--json PATH`` writes ``{"meta": {...}, "parameters": N, "rows": [...]}``, one row per case
(``case``, ``median_ms``, ``best_ms``, ``p25_ms``, ``p75_ms``, ``reps``); ``meta`` names the machine and the load
(``_common.machine_meta``), with the load averages after the run in ``loadavg_after``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from _common import machine_meta, summarize_ms, write_json

import manualbp
from manualbp.models import mlp
from manualbp.per_sample import add_noise, clip_per_sample


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed calls per case (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, parameters, rows} to this JSON file")
    opts = parser.parse_args(argv)
    if opts.reps < 1:
        parser.error("--reps must be positive")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    meta = machine_meta("bench_dp_noise.py", argv, reps=opts.reps, noise_multiplier=1.0, max_grad_norm=1.0)
    torch.manual_seed(0)
    model = mlp(hidden=(800, 800), in_shape=(1, 28, 28))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01)
    generator = torch.Generator().manual_seed(0)

    def noise(secure: bool) -> None:
        for p in params:
            p.grad = torch.zeros_like(p)
        add_noise(params, 1.0, 1.0, 32, None if secure else generator, secure_mode=secure)

    def step(batch: int, secure: bool) -> None:
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        optimizer.zero_grad(set_to_none=True)
        with clip_per_sample(model, 1.0, loss_reduction="sum"):
            manualbp.functional.cross_entropy(model(x), y, reduction="sum").backward()
        add_noise(params, 1.0, 1.0, batch, None if secure else generator, secure_mode=secure)
        optimizer.step()

    cases = {
        "noise, default": lambda: noise(False),
        "noise, secure_mode": lambda: noise(True),
        "os.urandom, 32 bytes a parameter": lambda: [os.urandom(32 * p.numel()) for p in params],
    }
    for batch in (32, 128):
        cases[f"step, batch {batch}, default"] = lambda b=batch: step(b, False)
        cases[f"step, batch {batch}, secure_mode"] = lambda b=batch: step(b, True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in cases.values():  # warm-up
        run()
    for _ in range(opts.reps):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    parameters = sum(p.numel() for p in params)
    print(f"{parameters} parameters, {torch.get_num_threads()} threads")
    rows = []
    for name, values in times.items():
        spread = summarize_ms(values)
        rows.append(
            {
                "case": name,
                "median_ms": spread["median"],
                "best_ms": min(values),
                "p25_ms": spread["p25"],
                "p75_ms": spread["p75"],
                "reps": len(values),
            }
        )
        print(f"{name:36s} median {statistics.median(values):8.1f} ms   best {min(values):8.1f} ms")
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {"meta": meta, "parameters": parameters, "rows": rows}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
