"""The cost of DP-SGD's ``secure_mode`` against the default noise, on mlp(800, 800) (1.28M parameters).

    python experiments/bench_dp_noise.py

Times, interleaved in one process, 30 repetitions each (median and best, ms): the noise alone
(``add_noise`` on zero gradients), reading its bytes from ``os.urandom`` (32 a parameter: 4 draws of 8 bytes),
and a whole DP-SGD step (forward, ``clip_per_sample`` backward, ``add_noise``, SGD) at batch 32 and 128, each
with the default noise (torch's generator) and with ``secure_mode``. On a shared machine take the best: the
median counts the other processes too.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

import manualbp
from manualbp.models import mlp
from manualbp.per_sample import add_noise, clip_per_sample


def main() -> None:
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
    for _ in range(30):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    print(f"{sum(p.numel() for p in params)} parameters, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"{name:36s} median {statistics.median(values):8.1f} ms   best {min(values):8.1f} ms")


if __name__ == "__main__":
    main()
