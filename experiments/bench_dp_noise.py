"""DP-SGD's noise on mlp(800, 800) (1.28M parameters): the normal generators, ``secure_mode``, prefetching.

    python experiments/bench_dp_noise.py [--reps 30] [--threads N] [--json experiments/results/bench_dp_noise.json]

Times, interleaved in one process, ``--reps`` repetitions each after one warm-up call (median and best, ms):
- the normal generators, each drawing 1.28M float32 N(0, 1) (``generator: ...`` rows): torch's ``normal_``
  (mt19937 and Box-Muller) in float32 and in float64, ``torch.randn``, Box-Muller from ``torch.rand`` uniforms,
  numpy's ziggurat (``Generator.standard_normal(dtype=float32)``) on PCG64, PCG64DXSM, SFC64, Philox and MT19937,
  and 2 generators filling a half each on 2 threads (numpy SFC64 seeded by ``SeedSequence.spawn``; torch);
- the noise alone (``add_noise`` on zero gradients), reading its bytes from ``os.urandom`` (32 a parameter: 4
  draws of 8 bytes);
- a whole DP-SGD step (forward, ``clip_per_sample`` backward, ``add_noise``, SGD) at batch 32 and 128, with the
  default noise (torch's generator), with ``secure_mode``, without noise (σ = 0), and with the noise drawn ahead
  in a background thread (``NoiseStream(prefetch=True)``, the same draws).
On a shared machine take the best: the median counts the other processes too.

Prints a table; with ``--json PATH`` writes ``{"meta": {...}, "parameters": N, "rows": [...]}``, one row per case
(``case``, ``median_ms``, ``best_ms``, ``p25_ms``, ``p75_ms``, ``reps``); ``meta`` names the machine and the load
(``_common.machine_meta``), with the load averages after the run in ``loadavg_after``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import machine_meta, summarize_ms, write_json

import manualbp
from manualbp.models import mlp
from manualbp.per_sample import add_noise, clip_per_sample
from manualbp.per_sample.noise import NoiseStream

#: numpy's bit generators timed under the ziggurat.
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "SFC64", "Philox", "MT19937")


def _ziggurat(rng: np.random.Generator, array: np.ndarray) -> Callable[[], object]:
    return lambda: rng.standard_normal(out=array, dtype=np.float32)


def generators(count: int, pool: ThreadPoolExecutor) -> dict[str, Callable[[], object]]:
    """One call each: ``count`` float32 N(0, 1) draws from each generator (see the module docstring)."""
    out = torch.empty(count)
    out64 = torch.empty(count, dtype=torch.float64)
    array = out.numpy()
    g = torch.Generator().manual_seed(0)
    numpy_rngs = {name: np.random.Generator(getattr(np.random, name)(0)) for name in BIT_GENERATORS}
    halves = [(0, count // 2), (count // 2, count)]
    spawned = [np.random.Generator(np.random.SFC64(s)) for s in np.random.SeedSequence(0).spawn(2)]
    torch_pair = [torch.Generator().manual_seed(i) for i in range(2)]

    def box_muller() -> None:
        pairs = (count + 1) // 2
        u = torch.rand(2 * pairs, generator=g)
        radius = torch.rsub(u[:pairs], 1.0).log_().mul_(-2.0).sqrt_()
        angle = u[pairs:].mul_(2 * math.pi)
        torch.cos(angle, out=out[:pairs]).mul_(radius)
        torch.sin(angle[: count - pairs], out=out[pairs:]).mul_(radius[: count - pairs])

    def numpy_threads() -> None:
        def fill(i: int) -> None:
            spawned[i].standard_normal(out=array[halves[i][0] : halves[i][1]], dtype=np.float32)

        list(pool.map(fill, range(2)))

    def torch_threads() -> None:
        list(pool.map(lambda i: out[halves[i][0] : halves[i][1]].normal_(generator=torch_pair[i]), range(2)))

    cases: dict[str, Callable[[], object]] = {
        "generator: torch normal_ float32": lambda: out.normal_(generator=g),
        "generator: torch normal_ float64": lambda: out64.normal_(generator=g),
        "generator: torch.randn float32": lambda: torch.randn(count, generator=g),
        "generator: Box-Muller from torch.rand": box_muller,
    }
    for name, rng in numpy_rngs.items():
        cases[f"generator: numpy {name} ziggurat float32"] = _ziggurat(rng, array)
    cases["generator: numpy SFC64 x2 on 2 threads"] = numpy_threads
    cases["generator: torch normal_ x2 on 2 threads"] = torch_threads
    return cases


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
    ahead = NoiseStream(torch.Generator().manual_seed(0), prefetch=True)

    def noise(secure: bool) -> None:
        for p in params:
            p.grad = torch.zeros_like(p)
        add_noise(params, 1.0, 1.0, 32, None if secure else generator, secure_mode=secure)

    def step(batch: int, secure: bool, sigma: float = 1.0, source: torch.Generator | NoiseStream = generator) -> None:
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        optimizer.zero_grad(set_to_none=True)
        with clip_per_sample(model, 1.0, loss_reduction="sum"):
            manualbp.functional.cross_entropy(model(x), y, reduction="sum").backward()
        add_noise(params, sigma, 1.0, batch, None if secure else source, secure_mode=secure)
        optimizer.step()

    pool = ThreadPoolExecutor(2)
    cases: dict[str, Callable[[], object]] = {
        **generators(sum(p.numel() for p in params), pool),
        "noise, default": lambda: noise(False),
        "noise, secure_mode": lambda: noise(True),
        "os.urandom, 32 bytes a parameter": lambda: [os.urandom(32 * p.numel()) for p in params],
    }
    for batch in (32, 128):
        cases[f"step, batch {batch}, default"] = functools.partial(step, batch, False)
        cases[f"step, batch {batch}, secure_mode"] = functools.partial(step, batch, True)
        cases[f"step, batch {batch}, no noise"] = functools.partial(step, batch, False, 0.0)
        cases[f"step, batch {batch}, noise prefetched"] = functools.partial(step, batch, False, source=ahead)
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
        print(f"{name:44s} median {statistics.median(values):8.1f} ms   best {min(values):8.1f} ms")
    pool.shutdown()
    ahead.close()
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {"meta": meta, "parameters": parameters, "rows": rows}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
