"""Training-step time, memory saved for backward and achieved FLOP rate: manual backward against autograd.

For each model (``mlp800x800`` = ``mlp(hidden=(800, 800))``, ``lenet5`` = ``lenet5()``, ``lstm`` and ``gru`` =
``recurrent("lstm"|"gru")``: the image read row by row, 28 steps of 28 pixels, hidden state 128, a Linear
on the last one; ``--model.arch=lstm|gru`` of ``manualbp fit``; on request, ``resnet18`` and ``convnext_tiny``:
torchvision's, 10 classes, on 3 x 64 x 64 images, the manual one ``manualbp.convert``-ed fully), each batch size
and each device, both
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
* **machine rate**: ``machine_gflops``, the ceiling a step's matmuls could reach, measured inside each
  row's timing loop, so under the same load as that row's steps (not once per run: a ceiling measured
  in a quiet or a busy minute made the share of it anything from 0.7 to 1.7). A float32
  ``--matmul-size`` square ``torch.mm`` into a preallocated output (2 n^3 FLOPs) is timed like a step,
  ``--matmul-reps`` times per row: one sample just before the first timed repetition, one just after
  the last, the others evenly between repetitions (one untimed matmul first; after a sample inside the
  loop, one untimed step per backend re-warms the caches that the matmul's operands evicted, so no
  timed step starts cold). ``machine_gflops`` is the best (highest) sample, the rate the machine
  showed it could reach while the row ran; ``machine_gflops_median`` and ``machine_gflops_min`` show
  the spread. ``machine_share`` = ``gflops`` / ``machine_gflops`` (``autograd_machine_share`` for the
  autograd step): the fraction of the machine's matmul rate a manual step achieves.
* **compiled** (``--compile``): each configuration gets a second row, ``"compiled": true`` (eager rows
  ``false``), where both models are wrapped in ``torch.compile(model, dynamic=False)`` (the default
  inductor backend, static shapes: the batch is fixed). Only the model is compiled: each backend's own
  loss and the SGD update stay eager, as in the eager row. The pair is built afresh from the same seed
  (equal state dicts). Per configuration, ``torch._dynamo.reset()``, then, inside a fresh, empty
  inductor cache directory (``torch._inductor.utils.fresh_cache()``: no compiled graph or kernel of an
  earlier run or configuration is reused) a throwaway elementwise function is compiled first (it pays
  the one-time costs: imports, compiler start-up, so that the backend compiled first is not charged
  them: about 11 s on the first configuration of a 2-core CPU run, under 1 s later; reported as
  ``compile_warmup_s``), then the manual model, then the autograd one (swapping the order does not
  change the two times). The first training step of each (forward, loss, backward: dynamo and inductor
  compile the forward graph, AOTAutograd the backward graph at the first backward; then the SGD update)
  is timed by wall clock as ``manual_compile_s`` / ``autograd_compile_s`` (seconds, a synchronize
  before and after on CUDA) and is not one of the timed steps. Its loss and gradients (taken before its
  update) are checked equal between the two compiled models with the same float32 tolerances as the
  eager check. ``manual_graphs`` / ``autograd_graphs`` and ``..._graph_breaks`` count what dynamo
  captured (one graph and no break when the whole forward compiled). Then warm-up and interleaved
  timing (machine-rate samples included) exactly as for the eager row, under
  ``torch.compiler.set_stance("fail_on_recompile")``: a recompilation during warm-up or timing (a guard
  failing) raises instead of being timed. ``time_ratio`` is then compiled manual over compiled
  autograd. Saved bytes are measured on the compiled models, the same way (the pack hook sees the
  tensors that the compiled forward saves for the compiled backward, under the same no-recompile
  stance). The FLOP count is not measured through compiled code: it is the eager count (the same math),
  taken on the fresh pair before it is compiled. When a model's compiling first step raises, the
  compiled row has only model, batch, device, ``compiled``, ``compile_error`` (the backend and the
  error's first line) and what was measured of the compilation before it, the table says so, and the
  run goes on (with torch 2.14.1 on the CPU, the
  autograd ``lstm``, ``torch.nn.LSTM`` on oneDNN's ``mkldnn_rnn_layer``, fails this way in inductor's
  generated alignment check; the manual one compiles).
* **autocast** (``--autocast bf16|fp16``, default ``none``): every step of both backends runs its forward and
  its loss under ``torch.autocast(device, dtype=bfloat16|float16)`` and its backward and SGD update outside
  it, as Lightning's ``bf16-mixed``/``16-mixed`` do (parameters and gradients stay float32; no gradient scaler,
  so ``fp16`` may underflow small gradients: it is timed, not trained). The same-step check then allows the
  battery's tolerance of that dtype (rtol = atol = 5e-2 for bfloat16, 1e-2 for float16); the saved bytes are
  measured under autocast (the saved activations are bfloat16/float16); the FLOP count is the float32 one (the
  same math). Every row records ``"autocast"``: ``"bf16"``, ``"fp16"`` or null.

A configuration whose two backends do not give the same loss and gradients (the same-step check) gets a row with
``same_step_error`` (the assertion's first line) instead of times; the others are still measured, the JSON is
written, and the script then exits with status 1.

    python experiments/bench.py [--quick] [--models mlp800x800 lenet5 lstm gru resnet18 convnext_tiny]
                                [--batches 32 128 512]
                                [--device all|cpu|cuda] [--reps 200] [--warmup 20] [--threads N]
                                [--matmul-size 2048] [--matmul-reps 10] [--compile] [--autocast none|bf16|fp16]
                                [--json experiments/results/bench_cpu.json]

prints a table, and with ``--json PATH`` writes a list of rows, one per (model, batch, device), two with
``--compile`` (eager, then compiled), with the keys model, batch, device, compiled, manual_ms,
autograd_ms, time_ratio, manual_saved_bytes, autograd_saved_bytes, saved_bytes_ratio, gflops,
machine_gflops, machine_share and more (spreads, autograd_gflops, flops_per_step, threads, the
compiled rows' compile times, ``loadavg_1min`` before/after the row, to show whether other processes
shared the cores, and the machine: ``device_name``, ``cpu_count``, ``torch``, the row's ``date``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import (
    BACKENDS,
    LOSSES,
    LossFn,
    build_pair,
    cpu_name,
    forward_context,
    make_optimizer,
    summarize_ms,
    train_step,
    write_json,
)
from torch.utils.flop_counter import FlopCounterMode

from manualbp.verify import DEFAULT_TOLERANCES

IN_SHAPE = (1, 28, 28)
#: Models on other inputs than MNIST's: torchvision's, on 64 x 64 colour images
IN_SHAPES = {"resnet18": (3, 64, 64), "convnext_tiny": (3, 64, 64)}
NUM_CLASSES = 10
MODELS = ("mlp800x800", "lenet5", "lstm", "gru")
BATCHES = (32, 128, 512)
LR = 0.01
#: ``--autocast``: the dtype the forward and the loss run in under ``torch.autocast`` (None: float32 throughout)
AUTOCAST: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


#: The key of the matmul probe's times in what ``time_interleaved`` returns.
PROBE = "machine_matmul"


def probe_positions(reps: int, samples: int) -> list[int]:
    """Where ``samples`` probe samples go among ``reps`` repetitions: position p means before repetition p
    (p == reps: after the last). One sample at each end, the others evenly between; a single sample in
    the middle."""
    if samples == 1:
        return [reps // 2]
    return [round(i * reps / (samples - 1)) for i in range(samples)]


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int,
    warmup: int,
    device: torch.device,
    probe: Callable[[], object] | None = None,
    probe_samples: int = 0,
) -> dict[str, list[float]]:
    """Milliseconds per call for each of ``fns``: ``warmup`` untimed calls each, then ``reps`` timed
    calls each, interleaved, with the order reversed every repetition (A B, B A, A B, ...).

    With a ``probe`` (the machine-rate matmul), also ``probe_samples`` timed calls of it spread over the
    repetitions (``probe_positions``), under the key ``PROBE``: one untimed call of it after the warm-up,
    and after each sample taken before a repetition, one untimed call of each of ``fns`` (in the coming
    repetition's order), so that the step timed next does not start with the caches the probe evicted.

    Python's garbage collector is paused while timing, as ``timeit`` does.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    order = list(fns)
    times: dict[str, list[float]] = {key: [] for key in order}
    at: dict[int, int] = {}
    if probe is not None and probe_samples > 0:
        probe()
        times[PROBE] = []
        for pos in probe_positions(reps, probe_samples):
            at[pos] = at.get(pos, 0) + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(reps + 1):
            rep_order = order if rep % 2 == 0 else order[::-1]
            if rep in at:
                for _ in range(at[rep]):
                    times[PROBE].append(time_call_ms(probe, device))
                if rep < reps:
                    for key in rep_order:
                        fns[key]()
            if rep == reps:
                break
            for key in rep_order:
                times[key].append(time_call_ms(fns[key], device))
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


# --------------------------------------------------------------------------------------------------
# Memory saved for backward, FLOPs, machine rate


def saved_for_backward(
    model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None = None
) -> dict[str, int]:
    """Bytes (and tensors) that the forward + loss of one step keep saved for the backward pass (under
    ``torch.autocast`` in ``autocast`` when given, as the step runs).

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

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), forward_context(x.device, autocast):
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


class MatmulProbe:
    """The machine-rate probe: an n x n float32 matmul (2 n^3 FLOPs) on ``device``, into a preallocated
    output; ``gflops(ms)`` turns the time of one call into GFLOP/s."""

    def __init__(self, device: torch.device, n: int = 2048) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen).to(device)
        self.b = torch.randn(n, n, generator=gen).to(device)
        self.out = torch.empty(n, n, device=device)
        self.flops = 2 * n**3

    def __call__(self) -> torch.Tensor:
        return torch.mm(self.a, self.b, out=self.out)

    def gflops(self, ms: float) -> float:
        return self.flops / (ms / 1e3) / 1e9


# --------------------------------------------------------------------------------------------------
# One configuration


def _same_step_tolerance(device: torch.device, autocast: torch.dtype | None = None) -> dict[str, float]:
    """float32 tolerances of the same-step checks (under ``autocast``: the verify battery's of that dtype).

    On CUDA the tolerance is looser: cuDNN runs float32 convolutions in TF32 by default (10-bit
    mantissa), and the two backends reach different convolution kernels (autograd's convolution
    backward, the manual conv_transpose2d/conv2d), so they round differently; a wrong gradient is still
    off by far more.
    """
    if autocast is not None:
        rtol, atol = DEFAULT_TOLERANCES[autocast]
        return dict(rtol=rtol, atol=atol)
    return dict(rtol=1e-4, atol=1e-5) if device.type == "cpu" else dict(rtol=1e-2, atol=1e-3)


def assert_same_step(
    results: dict[str, tuple[torch.Tensor, list[torch.Tensor]]],
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> None:
    """``results[backend]`` = (loss, parameter gradients): the manual and autograd ones agree."""
    tol = _same_step_tolerance(device, autocast)
    (loss_m, grads_m), (loss_a, grads_a) = results["manual"], results["autograd"]
    torch.testing.assert_close(loss_m, loss_a, **tol)
    assert len(grads_m) == len(grads_a)
    for gm, ga in zip(grads_m, grads_a):
        torch.testing.assert_close(gm, ga, **tol)


def check_same_step(
    models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None = None
) -> None:
    """Both backends give the same loss and parameter gradients on (x, y); the gradients are cleared
    (tolerances: ``_same_step_tolerance``). Each runs from the same seed, so that a model that draws masks in
    training (convnext_tiny's stochastic depth) draws the same ones on both sides."""
    results = {}
    for backend, model in models.items():
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(0)
            with forward_context(x.device, autocast):
                loss = LOSSES[backend](model(x), y)
        loss.backward()
        results[backend] = (loss.detach().float(), [p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    assert_same_step(results, x.device, autocast)


# --------------------------------------------------------------------------------------------------
# Compilation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """The first training step of a freshly compiled model: (wall seconds, loss, gradients).

    The seconds cover forward + loss + backward (where dynamo/inductor compile the forward graph and
    AOTAutograd the backward one) and the SGD update, not the copies of the loss and gradients taken
    between the two for the same-step check (the gradients are those of the initial weights)."""
    device = x.device
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with forward_context(device, autocast):
        loss = loss_fn(model(x), y)
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - start
    result = loss.detach().float(), [p.grad.clone() for p in model.parameters()]
    start = time.perf_counter()
    optimizer.step()
    _sync(device)
    return seconds + time.perf_counter() - start, *result


class CompileFailed(RuntimeError):
    """A model's first, compiling step raised: the message names the backend and the error; ``info`` holds
    what ``compile_pair`` measured before it (the compile times of the models compiled first)."""

    def __init__(self, message: str, info: dict[str, object]) -> None:
        super().__init__(message)
        self.info = info


def compile_pair(
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> tuple[dict[str, torch.nn.Module], dict[str, object]]:
    """Both models wrapped in ``torch.compile(model, dynamic=False)`` (inductor) and compiled by their
    first training step (``first_step``), inside a fresh inductor cache after a throwaway compile; the
    two first steps are checked to compute the same loss and gradients (a mismatch raises
    AssertionError; a first step that raises, CompileFailed). Returns the compiled models and
    {"manual_compile_s", "autograd_compile_s", "compile_warmup_s" (the throwaway compile's seconds),
    "<backend>_graphs", "<backend>_graph_breaks"}."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    device = x.device
    torch._dynamo.reset()
    compiled: dict[str, torch.nn.Module] = {}
    info: dict[str, object] = {}
    results = {}
    failure = None
    with fresh_cache():
        # one-time costs (imports, the C++ compiler or Triton starting, cache directories) go here
        start = time.perf_counter()
        warm = torch.compile(lambda t: torch.relu(t * 2 + 1), dynamic=False)
        warm(torch.randn(8, device=device))
        _sync(device)
        info["compile_warmup_s"] = time.perf_counter() - start
        for backend in BACKENDS:
            counters.clear()
            compiled[backend] = torch.compile(models[backend], dynamic=False)
            try:
                seconds, loss, grads = first_step(
                    compiled[backend], optimizers[backend], LOSSES[backend], x, y, autocast
                )
            except Exception as error:
                lines = str(error).strip().splitlines() or [""]
                failure = CompileFailed(f"{backend} model: {type(error).__name__}: {lines[0]}", dict(info))
                failure.__cause__ = error
                break
            info[f"{backend}_compile_s"] = seconds
            info[f"{backend}_graphs"] = int(counters["stats"]["unique_graphs"])
            info[f"{backend}_graph_breaks"] = int(sum(counters["graph_break"].values()))
            results[backend] = (loss, grads)
    if failure is not None:
        raise failure
    for backend in BACKENDS:
        optimizers[backend].zero_grad(set_to_none=True)
    assert_same_step(results, device, autocast)
    return compiled, info


def bench_config(
    model_name: str,
    batch: int,
    device: torch.device,
    reps: int,
    warmup: int,
    probe: MatmulProbe | None = None,
    probe_samples: int = 10,
    compiled: bool = False,
    seed: int = 0,
    autocast: torch.dtype | None = None,
) -> dict[str, object]:
    """Measure one (model, batch, device) configuration, eager or compiled, float32 or under ``autocast``;
    returns its row. With a ``probe``, the machine rate is sampled ``probe_samples`` times during the timing
    loop."""
    in_shape = IN_SHAPES.get(model_name, IN_SHAPE)
    models = build_pair(model_name, in_shape, seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *in_shape, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    # counted on the eager models (before any compilation): the same math for a compiled row
    flops = step_flops(models["autograd"], LOSSES["autograd"], x, y)
    manual_counted = step_flops(models["manual"], LOSSES["manual"], x, y)

    optimizers = {backend: make_optimizer(models[backend], "sgd", LR) for backend in BACKENDS}
    compile_info: dict[str, object] = {}
    if compiled:
        models, compile_info = compile_pair(models, optimizers, x, y, autocast)
    else:
        check_same_step(models, x, y, autocast)
    # no recompilation once compiled: a guard failing while measuring raises instead of compiling again
    stance = torch.compiler.set_stance("fail_on_recompile") if compiled else nullcontext()
    with stance:
        saved = {backend: saved_for_backward(models[backend], LOSSES[backend], x, y, autocast) for backend in BACKENDS}
        steps = {
            backend: (lambda b=backend: train_step(models[b], optimizers[b], LOSSES[b], x, y, autocast))
            for backend in BACKENDS
        }
        times = time_interleaved(steps, reps, warmup, device, probe, probe_samples)
    stats = {backend: summarize_ms(times[backend]) for backend in BACKENDS}
    pair_ratios = [m / a for m, a in zip(times["manual"], times["autograd"])]
    manual_ms, autograd_ms = stats["manual"]["median"], stats["autograd"]["median"]
    gflops = flops / (manual_ms / 1e3) / 1e9
    autograd_gflops = flops / (autograd_ms / 1e3) / 1e9
    machine = None
    if probe is not None and times.get(PROBE):
        machine = [probe.gflops(ms) for ms in times[PROBE]]
    return {
        "model": model_name,
        "batch": batch,
        "device": device.type,
        "compiled": compiled,
        "manual_ms": manual_ms,
        "autograd_ms": autograd_ms,
        "time_ratio": manual_ms / autograd_ms,
        "manual_saved_bytes": saved["manual"]["bytes"],
        "autograd_saved_bytes": saved["autograd"]["bytes"],
        "saved_bytes_ratio": saved["manual"]["bytes"] / saved["autograd"]["bytes"],
        "gflops": gflops,
        "machine_gflops": max(machine) if machine else None,
        "machine_share": gflops / max(machine) if machine else None,
        "autograd_gflops": autograd_gflops,
        "autograd_machine_share": autograd_gflops / max(machine) if machine else None,
        "machine_gflops_median": statistics.median(machine) if machine else None,
        "machine_gflops_min": min(machine) if machine else None,
        "machine_samples": len(machine) if machine else 0,
        "manual_compile_s": compile_info.get("manual_compile_s"),
        "autograd_compile_s": compile_info.get("autograd_compile_s"),
        **{key: value for key, value in compile_info.items() if not key.endswith("_compile_s")},
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
    return cpu_name()


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
    models: Sequence[str],
    batches: Sequence[int],
    devices: Sequence[torch.device],
    reps: int,
    warmup: int,
    matmul_size: int,
    matmul_reps: int,
    with_compiled: bool = False,
    autocast: str = "none",
) -> list[dict[str, object]]:
    """All rows, configuration by configuration (devices outermost); with ``with_compiled``, each
    configuration's eager row is followed by its compiled row; ``autocast``: a key of ``AUTOCAST``."""
    rows = []
    for device in devices:
        probe = MatmulProbe(device, matmul_size)
        extra = {
            "device_name": _device_name(device),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_size": matmul_size,
            "autocast": None if autocast == "none" else autocast,
        }
        if device.type == "cuda":  # float32 convolutions in cuDNN use TF32 by default; matmuls do not
            extra["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            extra["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        for model_name in models:
            for batch in batches:
                for compiled in (False, True) if with_compiled else (False,):
                    load_before = os.getloadavg()[0]
                    try:
                        row = bench_config(
                            model_name,
                            batch,
                            device,
                            reps,
                            warmup,
                            probe,
                            matmul_reps,
                            compiled,
                            autocast=AUTOCAST[autocast],
                        )
                    except AssertionError as error:  # the backends disagree: said in the row, the run goes on
                        first = (str(error).strip().splitlines() or [""])[0]
                        row = {
                            "model": model_name,
                            "batch": batch,
                            "device": device.type,
                            "compiled": compiled,
                            "same_step_error": first,
                        }
                        print(f"  {model_name} batch {batch} on {device.type}: NOT THE SAME STEP: {first}", flush=True)
                    except CompileFailed as error:  # a row that says so, and the other rows still measured
                        row = {
                            "model": model_name,
                            "batch": batch,
                            "device": device.type,
                            "compiled": True,
                            "compile_error": str(error),
                            **error.info,
                        }
                        print(f"  {model_name} batch {batch} on {device.type}: compile failed: {error}", flush=True)
                    else:
                        kind = "compiled" if compiled else "eager"
                        print(f"  measured {model_name} batch {batch} on {device.type} ({kind})", flush=True)
                    # 1-minute load average before and after (this process counts about its thread count): more
                    # means other processes competed for the cores
                    row["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                    row["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                    row.update(extra)
                    rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A readable table of the rows: medians with IQR, ratios, saved MiB, GFLOP/s, the share of the
    machine's matmul rate, and for compiled rows (mode ``comp``) the compile times."""
    header = (
        f"{'model':<11} {'batch':>5} {'dev':<4} {'mode':<5} {'manual ms (IQR)':>24} {'autograd ms (IQR)':>24} "
        f"{'ratio':>6} {'saved MiB m/a':>15} {'ratio':>6} {'GFLOP':>7} {'GFLOP/s m/a':>13} {'peak':>6} "
        f"{'share':>5} {'compile s m/a':>13}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("compile_error"):
            lines.append(
                f"{r['model']:<11} {r['batch']:>5} {r['device']:<4} {'comp':<5} compile failed: {r['compile_error']}"
            )
            continue
        if r.get("same_step_error"):
            mode = "comp" if r.get("compiled") else "eager"
            lines.append(
                f"{r['model']:<11} {r['batch']:>5} {r['device']:<4} {mode:<5} not the same step: {r['same_step_error']}"
            )
            continue
        peak = f"{r['machine_gflops']:>6.1f}" if r.get("machine_gflops") else f"{'-':>6}"
        share = f"{r['machine_share']:>5.2f}" if r.get("machine_share") else f"{'-':>5}"
        if r.get("compiled"):
            compile_s = f"{r['manual_compile_s']:>6.1f}/{r['autograd_compile_s']:<6.1f}"
        else:
            compile_s = f"{'-':>13}"
        lines.append(
            f"{r['model']:<11} {r['batch']:>5} {r['device']:<4} {'comp' if r.get('compiled') else 'eager':<5} "
            f"{r['manual_ms']:>8.3f} ({r['manual_ms_p25']:6.3f}-{r['manual_ms_p75']:7.3f}) "
            f"{r['autograd_ms']:>8.3f} ({r['autograd_ms_p25']:6.3f}-{r['autograd_ms_p75']:7.3f}) "
            f"{r['time_ratio']:>6.3f} "
            f"{r['manual_saved_bytes'] / 2**20:>7.2f}/{r['autograd_saved_bytes'] / 2**20:<7.2f} "
            f"{r['saved_bytes_ratio']:>6.3f} {r['flops_per_step'] / 1e9:>7.3f} "
            f"{r['gflops']:>6.1f}/{r['autograd_gflops']:<6.1f} {peak} {share} {compile_s}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, *IN_SHAPES])
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=None, help="timed steps per backend (default 200, quick 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per backend (default 20, quick 3)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument(
        "--matmul-reps",
        type=int,
        default=None,
        help="machine-rate matmul samples per row, spread over its timing loop (default 10, quick 3)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also a row per configuration with both models torch.compile'd (inductor), compile time apart",
    )
    parser.add_argument(
        "--autocast",
        default="none",
        choices=list(AUTOCAST),
        help="forward and loss under torch.autocast in bfloat16 or float16, backward and update outside (default: none)",
    )
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

    precision = "float32" if opts.autocast == "none" else f"float32 under {opts.autocast} autocast"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {precision}, input {IN_SHAPE} "
        f"(torchvision's models {IN_SHAPES['resnet18']}), "
        f"{reps} interleaved timed steps per backend after {warmup} warm-up steps",
        flush=True,
    )
    rows = run(
        opts.models, opts.batches, devices, reps, warmup, opts.matmul_size, matmul_reps, opts.compile, opts.autocast
    )
    print()
    for device in devices:
        print(f"{device.type}: {_device_name(device)}")
    print(format_table(rows))
    print(
        "\nmode: eager, or comp = both models torch.compile'd (inductor); ratio = manual / autograd (time: medians; "
        "saved: bytes). saved = bytes kept for backward, parameters excluded.\nGFLOP = FlopCounterMode count of "
        "forward+loss+backward; GFLOP/s m/a achieved by each step; peak = best GFLOP/s of a "
        f"{opts.matmul_size}^2 float32 matmul, sampled {matmul_reps} times during the row's timing; "
        "share = manual GFLOP/s / peak.\ncompile s m/a = wall time of the first (compiling) step of each compiled "
        "model, not part of its step times."
    )
    write_json(opts.json, rows)
    return rows


if __name__ == "__main__":
    if any(row.get("same_step_error") for row in main()):
        raise SystemExit("bench.py: the backends did not give the same step in some configuration (see the table)")
