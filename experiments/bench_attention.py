"""Scaled dot-product attention: memory saved for backward, peak memory of the backward, and time, against torch.

Three implementations of ``scaled_dot_product_attention(q, k, v)`` on the same float32 CPU inputs, batch 1,
``--heads`` heads (4), features E = Eᵥ = ``--features`` (64), L = S = each of ``--sizes`` (512 and 2048):

* ``manual``: ``manualbp.functional.scaled_dot_product_attention`` (saves q, k, v, O and one logsumexp per row;
  its backward recomputes the attention weights one block of keys at a time, FlashAttention-2 style);
* ``flash``: ``torch.nn.functional.scaled_dot_product_attention`` under
  ``torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)`` (torch's fused CPU kernel, forward and backward);
* ``math``: the same under ``SDPBackend.MATH`` (torch's composite of matmul, softmax and matmul, differentiated
  by autograd: it keeps the L×S attention weights for the backward).

Before measuring, each size is checked: manual's output and gradients against math's (float32 tolerances).

**Saved bytes.** The forward runs inside ``torch.autograd.graph.saved_tensors_hooks``; every tensor packed for
the backward is mapped to its storage, and each storage is counted once (deduplicated by
``untyped_storage().data_ptr()``, its ``nbytes()``): q, k and v count for every method (all three save them), a
view saved twice counts once. Target: manual's saved bytes ≤ flash's.

**Peak backward memory.** The CPU allocator has no peak counter (``torch.cuda.max_memory_allocated`` is
CUDA-only) and ``tracemalloc`` does not see torch's allocations, so the backward
(``torch.autograd.grad(out, (q, k, v), dL/dO)``, dL/dO allocated before) runs inside
``torch.profiler.profile(profile_memory=True)``, which records every allocation and free made by torch's CPU
allocator during the call as a ``[memory]`` event with its signed size (bytes). The events, in time order, are
summed: the running sum is the memory allocated since the backward began and still live; its maximum is the
**peak extra memory** of the backward: workspace and temporaries plus the three gradients it returns (the same
3·L·E floats for every method). Frees of memory allocated before the call (the saved tensors, released as the
graph is consumed) are not events the profiler can size, so they never lower the sum: the figure is what the
backward needed on top of what the forward left, an upper bound of the growth of the process's live memory.
Measured ``--mem-reps`` times per method (the allocator's behaviour is deterministic; the maximum is reported).
Target: manual ≤ 0.25 × math at L = 2048.

**Time.** One call = forward + backward (``torch.autograd.grad`` of the three inputs under a fixed dL/dO).
``--warmup`` untimed calls of each method, then ``--reps`` repetitions, each one call of every method in an
order that rotates every repetition (so a slow patch of the shared machine hits all of them), Python's garbage
collector paused; ``time.perf_counter``. Reported: the median and the interquartile range (p25, p75) in ms,
``time_ratio_flash`` = manual median / flash median and ``time_ratio_math`` = manual median / math median.

    python experiments/bench_attention.py [--quick] [--sizes 512 2048] [--heads 4] [--features 64]
                                          [--reps 10] [--warmup 2] [--mem-reps 2] [--threads N]
                                          [--json experiments/results/bench_attention.json]

prints a table, and with ``--json PATH`` writes ``{"meta": {...}, "rows": [...]}``: one row per size and method
(size, method, saved_bytes, saved_shapes, peak_backward_bytes, ms, p25_ms, p75_ms) and one ``"summary"`` row per
size with the ratios (saved_bytes_manual_over_flash, peak_backward_manual_over_math, time_ratio_flash,
time_ratio_math) and whether the targets are met; ``meta`` is ``_common.machine_meta``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import machine_meta, peak_allocated_bytes, summarize_ms, write_json
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import manualbp.functional as MF

METHODS = ("manual", "flash", "math")
SAVED_TARGET = 1.0  # manual's saved bytes / flash's
PEAK_TARGET = 0.25  # manual's peak backward memory / math's, at the largest size
PEAK_TARGET_SIZE = 2048

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _torch_backend(backend: SDPBackend) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return attend


ATTENTION: dict[str, Attention] = {
    "manual": MF.scaled_dot_product_attention,
    "flash": _torch_backend(SDPBackend.FLASH_ATTENTION),
    "math": _torch_backend(SDPBackend.MATH),
}


def make_inputs(size: int, heads: int, features: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v of shape (1, heads, size, features), float32, requiring grad; dL/dO of the output's shape."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, size, features, generator=g).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(1, heads, size, features, generator=g)


def forward_backward(attend: Attention, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    q, k, v, grad_out = inputs
    out = attend(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out))


def check(inputs: Sequence[torch.Tensor]) -> float:
    """manual's output and gradients against math's (float32 tolerances); the largest absolute difference."""
    manual = forward_backward(ATTENTION["manual"], inputs)
    reference = forward_backward(ATTENTION["math"], inputs)
    for a, b in zip(manual, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return max(float((a - b).abs().max()) for a, b in zip(manual, reference))


def saved_for_backward(attend: Attention, inputs: Sequence[torch.Tensor]) -> tuple[int, list[list[int]]]:
    """The bytes of the distinct storages the forward saves for the backward, and the saved tensors' shapes."""
    storages: dict[int, int] = {}
    shapes: list[list[int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        shapes.append(list(t.shape))
        return t

    q, k, v, _ = inputs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attend(q, k, v)
    return sum(storages.values()), shapes


def peak_backward_bytes(attend: Attention, inputs: Sequence[torch.Tensor]) -> int:
    """The maximum, over the backward, of the bytes allocated since it began and not yet freed (see the docstring)."""
    q, k, v, grad_out = inputs
    out = attend(q, k, v)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
    del grads, out
    return peak_allocated_bytes(prof)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_methods(inputs: Sequence[torch.Tensor], reps: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved forward + backward times in ms per method (the order rotates every repetition)."""
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for method in METHODS:
        for _ in range(warmup):
            forward_backward(ATTENTION[method], inputs)
    with _gc_paused():
        for rep in range(reps):
            order = METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]
            for method in order:
                start = time.perf_counter()
                forward_backward(ATTENTION[method], inputs)
                times[method].append((time.perf_counter() - start) * 1e3)
    return times


def bench_size(size: int, heads: int, features: int, reps: int, warmup: int, mem_reps: int) -> list[dict[str, Any]]:
    inputs = make_inputs(size, heads, features)
    max_diff = check(inputs)
    rows: list[dict[str, Any]] = []
    times = time_methods(inputs, reps, warmup)
    for method in METHODS:
        saved, shapes = saved_for_backward(ATTENTION[method], inputs)
        peak = max(peak_backward_bytes(ATTENTION[method], inputs) for _ in range(mem_reps))
        summary = summarize_ms(times[method])
        rows.append(
            {
                "size": size,
                "method": method,
                "saved_bytes": saved,
                "saved_shapes": shapes,
                "peak_backward_bytes": peak,
                "ms": summary["median"],
                "p25_ms": summary["p25"],
                "p75_ms": summary["p75"],
                "reps": reps,
            }
        )
    by = {row["method"]: row for row in rows}
    saved_ratio = by["manual"]["saved_bytes"] / by["flash"]["saved_bytes"]
    peak_ratio = by["manual"]["peak_backward_bytes"] / by["math"]["peak_backward_bytes"]
    rows.append(
        {
            "size": size,
            "method": "summary",
            "heads": heads,
            "features": features,
            "check_max_abs_diff": max_diff,
            "saved_bytes_manual_over_flash": saved_ratio,
            "saved_target_met": saved_ratio <= SAVED_TARGET,
            "peak_backward_manual_over_math": peak_ratio,
            "peak_target_met": peak_ratio <= PEAK_TARGET if size >= PEAK_TARGET_SIZE else None,
            "time_ratio_flash": by["manual"]["ms"] / by["flash"]["ms"],
            "time_ratio_math": by["manual"]["ms"] / by["math"]["ms"],
        }
    )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    mb = 2**20
    lines = [f"{'L=S':>6} {'method':>7} {'saved MiB':>10} {'peak bwd MiB':>13} {'fwd+bwd ms':>11} {'p25-p75':>17}"]
    for row in rows:
        if row["method"] == "summary":
            lines.append(
                f"{'':>6} {'ratios':>7} manual/flash saved {row['saved_bytes_manual_over_flash']:.3f}, "
                f"manual/math peak {row['peak_backward_manual_over_math']:.3f}, time manual/flash "
                f"{row['time_ratio_flash']:.2f} manual/math {row['time_ratio_math']:.2f}"
            )
            continue
        lines.append(
            f"{row['size']:>6} {row['method']:>7} {row['saved_bytes'] / mb:>10.2f} "
            f"{row['peak_backward_bytes'] / mb:>13.2f} {row['ms']:>11.1f} "
            f"{row['p25_ms']:>8.1f}-{row['p75_ms']:<8.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="L = S (default 512 2048; quick 64 256)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--reps", type=int, default=None, help="timed calls per method (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per method (default 2, quick 1)")
    parser.add_argument("--mem-reps", type=int, default=2, help="peak-memory measurements per method")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows} to this JSON file")
    opts = parser.parse_args(argv)
    sizes = opts.sizes or ([64, 256] if opts.quick else [512, 2048])
    reps = opts.reps if opts.reps is not None else (3 if opts.quick else 10)
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 2)
    if reps < 1 or warmup < 0 or opts.mem_reps < 1 or min(sizes) < 1:
        parser.error("--reps, --mem-reps and --sizes must be positive, --warmup non-negative")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32, batch 1, {opts.heads} heads, "
        f"E = {opts.features}, {reps} interleaved timed calls per method after {warmup} warm-up calls",
        flush=True,
    )
    meta = machine_meta("bench_attention.py", argv, reps=reps, warmup=warmup, mem_reps=opts.mem_reps)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        rows += bench_size(size, opts.heads, opts.features, reps, warmup, opts.mem_reps)
        print(f"  measured L = S = {size}", flush=True)
    print(format_table(rows))
    largest = [r for r in rows if r["method"] == "summary" and r["peak_target_met"] is not None]
    saved_ok = all(r["saved_target_met"] for r in rows if r["method"] == "summary")
    print(
        f"\nTargets: saved bytes manual <= flash: {'met' if saved_ok else 'NOT met'}; peak backward memory manual "
        f"<= {PEAK_TARGET} x math at L = S >= {PEAK_TARGET_SIZE}: "
        + (("met" if all(r["peak_target_met"] for r in largest) else "NOT met") if largest else "not measured")
    )
    result = {"meta": meta, "rows": rows}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
