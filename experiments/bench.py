"""Training-step time, memory saved for backward and achieved FLOP rate: manual backward against autograd.

For each model (``mlp800x800`` = ``mlp(hidden=(800, 800))``, ``lenet5`` = ``lenet5()``, ``lstm`` and ``gru`` =
``recurrent("lstm"|"gru")``: the image read row by row, 28 steps of 28 pixels, hidden state 128, a Linear
on the last one; ``--model.arch=lstm|gru`` of ``manualbp fit``), each batch size and each device, both
backends are built from the same seed (their state dicts are checked equal), get the same float32 batch of
1x28x28 inputs and random labels, and are first checked to give the same loss and gradients. Then:

* **time**: one training step (zero grads, forward, loss, backward, plain SGD update; the manual network
  uses ``manualbp.functional.cross_entropy``, the autograd one ``torch.nn.functional.cross_entropy``),
  run ``--reps`` times per backend after ``--warmup`` untimed steps, interleaved manual / autograd /
  autograd / manual / ... (the order alternates every repetition, as in ``conv_backward_timing.py``), so
  a slow patch of the machine hits both. Reported: the median and the interquartile range (p25-p75) in
  ms, ``time_ratio`` = manual median / autograd median, and ``pair_ratio_median``, the median of the
  per-repetition ratios (robust to drift). CPU steps are timed with ``time.perf_counter``; CUDA steps
  with CUDA events recorded around the step on the current stream, after a ``synchronize`` so that each
  step starts on an idle device and no earlier kernel is counted.
* **saved bytes**: the bytes that the forward + loss leave saved for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks``: every tensor packed is mapped to its storage, each
  storage is counted once (deduplicated by ``untyped_storage().data_ptr()``, its ``nbytes()``), and
  storages of parameters are excluded (a saved weight, or a view of one like ``W.t()``, costs no memory
  of its own). The input batch is included when a layer saves it (both backends save it).
* **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over forward + loss + backward of the
  autograd model. It counts matmul-like ops (mm/addmm/bmm, convolution and its backward) as 2 FLOPs per
  multiply-add, and no elementwise work (activations, pooling, the loss, the SGD update), so it is the
  arithmetic a training step cannot avoid; the same count is used for both backends (they do the same
  math). ``manual_counted_flops`` is the counter's figure over the manual model, as a cross-check.
  ``gflops`` = that count / manual median time; ``autograd_gflops`` likewise.
* **machine rate**: ``machine_gflops``, the median GFLOP/s of a float32 ``--matmul-size`` square matmul
  (2 n^3 FLOPs) on the same device, the ceiling a step's matmuls could reach.

    python experiments/bench.py [--quick] [--models mlp800x800 lenet5 lstm gru] [--batches 32 128 512]
                                [--device all|cpu|cuda] [--reps 200] [--warmup 20] [--threads N]
                                [--json experiments/results/bench_cpu.json]

prints a table, and with ``--json PATH`` writes a list of rows, one per (model, batch, device), with the
keys model, batch, device, manual_ms, autograd_ms, time_ratio, manual_saved_bytes, autograd_saved_bytes,
saved_bytes_ratio, gflops, machine_gflops and more (spreads, autograd_gflops, flops_per_step, threads,
``loadavg_1min`` before/after the configuration, to show whether other processes shared the cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import BACKENDS, LOSSES, LossFn, build_pair, make_optimizer, train_step

IN_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
MODELS = ("mlp800x800", "lenet5", "lstm", "gru")
BATCHES = (32, 128, 512)
LR = 0.01


# --------------------------------------------------------------------------------------------------
# Timing


def time_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn`` in milliseconds.

    CPU: ``time.perf_counter`` around the call. CUDA: the device is synchronised first (nothing of an
    earlier call still runs), then CUDA events are recorded on the current stream before and after the
    call, and the end event is waited for; the result is the GPU time between the two events, which
    includes any time the GPU waited for the CPU to launch kernels (that is part of a step too).
    """
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


def time_interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds per call for each of ``fns``: ``warmup`` untimed calls each, then ``reps`` timed
    calls each, interleaved, with the order reversed every repetition (A B, B A, A B, ...).

    Python's garbage collector is paused while timing, as ``timeit`` does.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    order = list(fns)
    times: dict[str, list[float]] = {key: [] for key in order}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(reps):
            for key in order if rep % 2 == 0 else reversed(order):
                times[key].append(time_call_ms(fns[key], device))
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize_ms(times: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range (p25, p75) of a list of times."""
    if len(times) >= 2:
        p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        p25 = p75 = times[0]
    return {"median": statistics.median(times), "p25": p25, "p75": p75}


# --------------------------------------------------------------------------------------------------
# Memory saved for backward, FLOPs, machine rate


def saved_for_backward(model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes (and tensors) that the forward + loss of one step keep saved for the backward pass.

    Every tensor autograd (or a custom Function's ``ctx.save_for_backward``) saves goes through the
    pack hook of ``torch.autograd.graph.saved_tensors_hooks``. A tensor is charged the size of its whole
    storage (``untyped_storage().nbytes()``), each storage once (several saved views of one buffer cost
    it once), and storages shared with a parameter are not charged (the weights exist anyway).

    Returns {"bytes": total, "tensors": number of tensors packed, "storages": number of storages charged}.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    charged: dict[int, int] = {}
    packed = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal packed
        packed += 1
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in charged:
            charged[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y)
    del loss  # frees the graph and what it saved
    return {"bytes": sum(charged.values()), "tensors": packed, "storages": len(charged)}


def step_flops(model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of forward + loss + backward, as ``FlopCounterMode`` counts them (matmul-like ops only, 2
    per multiply-add). The gradients it leaves are cleared.

    oneDNN and cuDNN are off while counting: with them ``torch.nn.LSTM`` runs as one fused op (oneDNN's
    on the CPU, cuDNN's on CUDA) that the counter does not see, without them as the matmuls it counts.
    Convolutions are counted before any backend is chosen, so the other models' counts do not change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # from flags() on a CPU build
        with (
            torch.backends.mkldnn.flags(enabled=False),
            torch.backends.cudnn.flags(enabled=False),
            FlopCounterMode(display=False) as counter,
        ):
            loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def machine_gflops(device: torch.device, n: int = 2048, reps: int = 10, warmup: int = 2) -> float:
    """Median GFLOP/s of an n x n float32 matmul (2 n^3 FLOPs) on ``device``."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    times = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, reps, warmup, device)["mm"]
    return 2 * n**3 / (statistics.median(times) / 1e3) / 1e9


# --------------------------------------------------------------------------------------------------
# One configuration


def check_same_step(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> None:
    """Both backends give the same loss and parameter gradients on (x, y); the gradients are cleared.

    On CUDA the tolerance is looser: cuDNN runs float32 convolutions in TF32 by default (10-bit
    mantissa), and the two backends reach different convolution kernels (autograd's convolution
    backward, the manual conv_transpose2d/conv2d), so they round differently; a wrong gradient is still
    off by far more.
    """
    tol = dict(rtol=1e-4, atol=1e-5) if x.device.type == "cpu" else dict(rtol=1e-2, atol=1e-3)
    results = {}
    for backend, model in models.items():
        loss = LOSSES[backend](model(x), y)
        loss.backward()
        results[backend] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    (loss_m, grads_m), (loss_a, grads_a) = results["manual"], results["autograd"]
    torch.testing.assert_close(loss_m, loss_a, **tol)
    for gm, ga in zip(grads_m, grads_a):
        torch.testing.assert_close(gm, ga, **tol)


def bench_config(
    model_name: str, batch: int, device: torch.device, reps: int, warmup: int, seed: int = 0
) -> dict[str, object]:
    """Measure one (model, batch, device) configuration; returns its row (without machine_gflops)."""
    models = build_pair(model_name, IN_SHAPE, seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *IN_SHAPE, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    check_same_step(models, x, y)

    saved = {backend: saved_for_backward(models[backend], LOSSES[backend], x, y) for backend in BACKENDS}
    flops = step_flops(models["autograd"], LOSSES["autograd"], x, y)
    manual_counted = step_flops(models["manual"], LOSSES["manual"], x, y)

    optimizers = {backend: make_optimizer(models[backend], "sgd", LR) for backend in BACKENDS}
    steps = {
        backend: (lambda b=backend: train_step(models[b], optimizers[b], LOSSES[b], x, y)) for backend in BACKENDS
    }
    times = time_interleaved(steps, reps, warmup, device)
    stats = {backend: summarize_ms(times[backend]) for backend in BACKENDS}
    pair_ratios = [m / a for m, a in zip(times["manual"], times["autograd"])]
    manual_ms, autograd_ms = stats["manual"]["median"], stats["autograd"]["median"]
    return {
        "model": model_name,
        "batch": batch,
        "device": device.type,
        "manual_ms": manual_ms,
        "autograd_ms": autograd_ms,
        "time_ratio": manual_ms / autograd_ms,
        "manual_saved_bytes": saved["manual"]["bytes"],
        "autograd_saved_bytes": saved["autograd"]["bytes"],
        "saved_bytes_ratio": saved["manual"]["bytes"] / saved["autograd"]["bytes"],
        "gflops": flops / (manual_ms / 1e3) / 1e9,
        "machine_gflops": None,  # filled in by run()
        "autograd_gflops": flops / (autograd_ms / 1e3) / 1e9,
        "manual_ms_p25": stats["manual"]["p25"],
        "manual_ms_p75": stats["manual"]["p75"],
        "autograd_ms_p25": stats["autograd"]["p25"],
        "autograd_ms_p75": stats["autograd"]["p75"],
        "pair_ratio_median": statistics.median(pair_ratios),
        "flops_per_step": flops,
        "manual_counted_flops": manual_counted,
        "manual_saved_tensors": saved["manual"]["tensors"],
        "autograd_saved_tensors": saved["autograd"]["tensors"],
        "reps": reps,
        "warmup": warmup,
    }


# --------------------------------------------------------------------------------------------------
# Driver


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_devices(choice: str) -> list[torch.device]:
    """``all``: the CPU, plus the current CUDA device when there is one; ``cpu``; ``cuda`` (must exist)."""
    if choice == "cpu":
        return [torch.device("cpu")]
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench.py: --device cuda asked for, but torch.cuda.is_available() is False")
        return [torch.device("cuda", torch.cuda.current_device())]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    return devices


def run(
    models: Sequence[str], batches: Sequence[int], devices: Sequence[torch.device], reps: int, warmup: int,
    matmul_size: int, matmul_reps: int,
) -> list[dict[str, object]]:
    """All rows, configuration by configuration (devices outermost)."""
    rows = []
    for device in devices:
        rate = machine_gflops(device, matmul_size, matmul_reps)
        extra = {
            "device_name": _device_name(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_size": matmul_size,
        }
        if device.type == "cuda":  # float32 convolutions in cuDNN use TF32 by default; matmuls do not
            extra["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            extra["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        for model_name in models:
            for batch in batches:
                load_before = os.getloadavg()[0]
                row = bench_config(model_name, batch, device, reps, warmup)
                row["machine_gflops"] = rate
                # 1-minute load average before and after (this process counts about its thread count): more means
                # other processes competed for the cores
                row["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                row.update(extra)
                rows.append(row)
                print(f"  measured {model_name} batch {batch} on {device.type}", flush=True)
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A readable table of the rows: medians with IQR, ratios, saved MiB, GFLOP/s."""
    header = (
        f"{'model':<11} {'batch':>5} {'dev':<4} {'manual ms (IQR)':>24} {'autograd ms (IQR)':>24} {'ratio':>6} "
        f"{'saved MiB m/a':>15} {'ratio':>6} {'GFLOP':>7} {'GFLOP/s m/a':>13} {'peak':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<11} {r['batch']:>5} {r['device']:<4} "
            f"{r['manual_ms']:>8.3f} ({r['manual_ms_p25']:6.3f}-{r['manual_ms_p75']:7.3f}) "
            f"{r['autograd_ms']:>8.3f} ({r['autograd_ms_p25']:6.3f}-{r['autograd_ms_p75']:7.3f}) "
            f"{r['time_ratio']:>6.3f} "
            f"{r['manual_saved_bytes'] / 2**20:>7.2f}/{r['autograd_saved_bytes'] / 2**20:<7.2f} "
            f"{r['saved_bytes_ratio']:>6.3f} {r['flops_per_step'] / 1e9:>7.3f} "
            f"{r['gflops']:>6.1f}/{r['autograd_gflops']:<6.1f} {r['machine_gflops']:>6.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=None, help="timed steps per backend (default 200, quick 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per backend (default 20, quick 3)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-reps", type=int, default=None, help="default 10, quick 3")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute on 2 CPU cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    opts = parser.parse_args(argv)
    reps = opts.reps if opts.reps is not None else (20 if opts.quick else 200)
    warmup = opts.warmup if opts.warmup is not None else (3 if opts.quick else 20)
    matmul_reps = opts.matmul_reps if opts.matmul_reps is not None else (3 if opts.quick else 10)
    if reps < 1 or warmup < 0 or matmul_reps < 1 or any(b < 1 for b in opts.batches):
        parser.error("--reps, --matmul-reps and --batches must be positive, --warmup non-negative")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    devices = resolve_devices(opts.device)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32, input {IN_SHAPE}, "
        f"{reps} interleaved timed steps per backend after {warmup} warm-up steps",
        flush=True,
    )
    rows = run(opts.models, opts.batches, devices, reps, warmup, opts.matmul_size, matmul_reps)
    print()
    for device in devices:
        print(f"{device.type}: {_device_name(device)}")
    print(format_table(rows))
    print(
        "\nratio = manual / autograd (time: medians; saved: bytes). saved = bytes kept for backward, parameters "
        "excluded.\nGFLOP = FlopCounterMode count of forward+loss+backward; GFLOP/s m/a achieved by each step; "
        f"peak = {opts.matmul_size}^2 float32 matmul GFLOP/s."
    )
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {opts.json}")
    return rows


if __name__ == "__main__":
    main()
