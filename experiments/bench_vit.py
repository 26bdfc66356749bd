"""The vision transformer (``--model.arch=vit``): training step, per-sample gradients and DP-SGD step, against peers.

The network is ``manualbp.models.vit()`` on MNIST-shaped input (1, 28, 28), 10 classes: torchvision's
``VisionTransformer`` (4 x 4 patches of 7 x 7 pixels, hidden 64, 4 pre-norm blocks of 4-head self-attention and a
GELU MLP of width 128, a class token and a learned position embedding; 139k parameters). ``backend="manual"`` is
the network converted by ``manualbp.convert`` (every layer, the class token and the position embedding with a
hand-written backward), ``backend="autograd"`` its torch.nn twin; both are built from the same seed and their state
dicts checked equal. torchvision initialises the classifier's weight to zeros, which makes every other gradient
exactly zero at initialisation (a check would compare zeros), so both sides' head weight is drawn again, the same,
as ``nn.Linear`` draws it (``build_pair``). One seeded batch of ``--batch`` (128) random float32 images and random
labels; every method on its own copy of the model (a step of one never changes another's weights). Three sections:

* **train**: one training step (zero grads, forward, cross entropy, backward, plain SGD update, lr 0.01,
  ``_common.train_step``): ``manual`` (manualbp's cross entropy) against ``autograd`` (torch's), after a check that
  both give the same loss and gradients. Ratio: manual / autograd. Target: <= 1.10.
* **per_sample**: the per-sample gradients of every parameter, (N, *p.shape), of the mean cross entropy (row n is
  the gradient of sample n's own loss, Opacus's convention): ``manualbp_grad_sample`` (the manual network's forward
  and backward inside ``manualbp.per_sample_grads``); ``torch_func_vmap`` (``torch.func.vmap(grad(...))`` of
  ``functional_call`` on the twin, ``bench_per_sample._vmap_per_sample_grad``; under vmap, torch's CPU flash
  attention, forward and backward, has no batching rule and falls back to a loop over the samples, a warning that is
  silenced here); ``opacus_gsm`` (the twin wrapped in ``opacus.GradSampleModule``, forward and backward);
  ``opacus_gsm_dpmha`` (the same after ``opacus.validators.ModuleValidator.fix``, which replaces every
  ``nn.MultiheadAttention`` by Opacus's ``DPMultiheadAttention``, separate q, k, v Linears: with opacus 1.6.0 its
  ``batch_first=True`` path, the one torchvision's attention needs, reshapes the heads' outputs wrongly
  (meta-pytorch/opacus#825), so this network computes other logits and fails its check); and
  ``opacus_gsm_dpmha_seqfirst`` (each ``DPMultiheadAttention`` run on its correct ``batch_first=False`` path, the
  inputs and output transposed around it: ``dpmha(seq_first=True)``). ``autograd_fwd_bwd``, the twin's forward and
  backward without per-sample gradients, is an extra row. Opacus hooks a module that owns trainable parameters but
  has no grad sampler as a whole, through its functorch fallback (``prepare_layer``: vmap of grad of the module on
  its input and output gradient, after the ordinary backward), and does not descend into it; torchvision's
  ``VisionTransformer`` owns ``class_token``, so with either attention the whole network is one functorch layer
  (``meta["opacus_hooked_modules"]``). The q, k and v gradients of a ``DPMultiheadAttention`` are concatenated into
  those of ``in_proj_weight``/``in_proj_bias`` for the check. Each peer's network is first checked to compute the
  twin's logits, then its per-sample gradients against manualbp's (float32 tolerances, the max abs difference
  recorded). Ratio: method / manualbp_grad_sample. Target: manualbp faster than torch.func and than every Opacus
  configuration that runs.
* **dp_step**: a whole DP-SGD step: per-sample clipping to C = 1, Gaussian noise σ = 1, division by the expected
  batch size (= the batch), SGD update. ``manualbp_dp`` (the backward of the summed loss inside
  ``manualbp.clip_per_sample(model, 1.0, loss_reduction="sum")``, ``manualbp.per_sample.add_noise``, SGD: the step
  of ``experiments/bench_per_sample.py``'s ``manualbp_clip``) against Opacus's ``PrivacyEngine.make_private``
  (``bench_per_sample._opacus_private``) with ``grad_sample_mode`` ``"hooks"``, ``"functorch"`` and ``"ghost"``
  (fast gradient clipping: per-sample norms in a first backward, a second backward of the reweighted loss), each on
  the twin (``opacus_<mode>``: ``make_private``'s validator rejects ``nn.MultiheadAttention``), on the twin with
  ``DPMultiheadAttention`` (``opacus_<mode>_dpmha``: other logits, as above) and with the sequence-first one
  (``opacus_<mode>_dpmha_seqfirst``). Before timing, each Opacus step's clipped mean without noise (σ = 0, one
  backward, ``optimizer.pre_step()``) is checked against manualbp's (the clipped sum / batch). Ratio: method /
  manualbp_dp. Target: manualbp faster than Opacus's fastest mode that runs.

A method that fails to build, to run or its check is recorded as a row with its ``error`` (the exception's type
and first line), not timed, and the run goes on. Within each section the methods are timed interleaved
(``bench_per_sample.time_interleaved``: ``--warmup`` untimed calls of each, then ``--reps`` repetitions, each one
call of every method in an order that rotates by one every repetition, so a slow patch of the shared machine hits
all of them; Python's garbage collector paused; ``time.perf_counter``). Reported: the median and the interquartile
range in ms, and the ratio of medians; the train row also has ``pair_ratio_median``, the median of the
per-repetition manual / autograd ratios.

    python experiments/bench_vit.py [--quick] [--batch 128] [--reps 30] [--warmup 3] [--threads N]
                                    [--json experiments/results/bench_vit.json]

prints a table, and with ``--json PATH`` writes ``{"meta": {...}, "rows": [...], "targets": [...]}``: one row per
(section, method) with the keys section, method, batch, and ms, p25_ms, p75_ms, ratio, reference (the method the
ratio divides by), reps, check_max_abs_diff, or error; one target per section (target, section, value = manualbp's
median over the other's, threshold, met, against); ``meta`` is ``_common.machine_meta`` plus the opacus and
torchvision versions, the parameter count, the checks, the modules Opacus hooked and the 1-minute load average
before and after each section.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import (
    BACKENDS,
    LOSSES,
    assert_same_weights,
    machine_meta,
    make_optimizer,
    summarize_ms,
    train_step,
    write_json,
)
from bench_per_sample import _opacus_private, _version, _vmap_per_sample_grad, time_interleaved

import manualbp
from manualbp.models import vit
from manualbp.per_sample import add_noise

IN_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
BATCH = 128
LR = 0.01
NOISE, CLIP = 1.0, 1.0
TOL = dict(rtol=1e-4, atol=1e-5)  # float32
TRAIN_TARGET = 1.10  # manual / autograd training step
OPACUS_MODES = ("hooks", "functorch", "ghost")

Fn = Callable[[], object]


class Failed(Exception):
    """A method that could not be built, run or checked: the row records ``str(self)``."""


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [""]
    line = lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."
    return f"{type(error).__name__}: {line}"


def build_pair(seed: int = 0) -> dict[str, torch.nn.Module]:
    """{"manual": vit, "autograd": vit}, built from the same seed, with equal state dicts.

    torchvision initialises the classifier's weight ``heads.head.weight`` to zeros, so at initialisation the logits
    do not depend on any other parameter and every other gradient is exactly zero: the checks would compare zeros.
    Both models' head weight is therefore drawn again, the same on both sides, as ``nn.Linear`` draws it
    (uniform in ±1/√fan_in, a generator seeded with ``seed``): the network after some training, not at its first
    step. The amount of work per step is the same."""
    models = {}
    for backend in BACKENDS:
        torch.manual_seed(seed)
        models[backend] = vit(in_shape=IN_SHAPE, num_classes=NUM_CLASSES, backend=backend)
    bound = 1 / math.sqrt(models["autograd"].heads.head.in_features)
    head = torch.empty_like(models["autograd"].heads.head.weight)
    head.uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))
    for model in models.values():
        with torch.no_grad():
            model.heads.head.weight.copy_(head)
    assert_same_weights(models["manual"], models["autograd"])
    return models


@functools.cache
def _seq_first_dpmha_class() -> type:
    from opacus.layers import DPMultiheadAttention

    class SeqFirstDPMultiheadAttention(DPMultiheadAttention):
        """Opacus's DPMultiheadAttention run sequence-first (``batch_first=False``, its correct path) on batch-first
        inputs and outputs: the inputs transposed before, the output after."""

        def forward(self, query, key, value, *args, **kwargs):
            out, weights = super().forward(
                query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), *args, **kwargs
            )
            return out.transpose(0, 1), weights

    return SeqFirstDPMultiheadAttention


def dpmha(twin: torch.nn.Module, seq_first: bool = False) -> torch.nn.Module:
    """A copy of ``twin`` with every ``nn.MultiheadAttention`` replaced by Opacus's ``DPMultiheadAttention``
    (``ModuleValidator.fix``, the same weights). ``seq_first``: each one then made a
    ``SeqFirstDPMultiheadAttention`` (``batch_first=False`` inside, the inputs and output transposed around it):
    Opacus 1.6.0's ``batch_first=True`` path reshapes the heads' outputs wrongly (meta-pytorch/opacus#825), so the
    plain replacement computes another function than torchvision's attention."""
    from opacus.layers import DPMultiheadAttention
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(copy.deepcopy(twin))
    if seq_first:
        cls = _seq_first_dpmha_class()
        for module in fixed.modules():
            if type(module) is DPMultiheadAttention and module.batch_first:
                module.__class__ = cls  # the same parameters and state, only the forward differs
                module.batch_first = False
    return fixed


def _logits_diff(model: torch.nn.Module, twin: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x) - twin(x)).abs().max().item()


def _max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> float:
    """Check ``got`` against ``want``, name by name (``TOL``; AssertionError naming the first mismatch); returns the
    largest absolute difference."""
    if set(got) != set(want):
        raise AssertionError(f"{what}: parameters differ: {sorted(set(got) ^ set(want))}")
    diff = 0.0
    for name, ref in want.items():
        torch.testing.assert_close(got[name], ref, **TOL, msg=lambda m, n=name: f"{what} {n}: {m}")
        diff = max(diff, (got[name] - ref).abs().max().item())
    return diff


def _merge_qkv(grads: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """``DPMultiheadAttention``'s q, k, v Linears' tensors concatenated into ``nn.MultiheadAttention``'s
    ``in_proj_weight``/``in_proj_bias`` (the rows of q, then k, then v: along ``dim``, 1 for per-sample tensors)."""
    out = {}
    for name, value in grads.items():
        if ".qlinear." not in name:
            if ".klinear." not in name and ".vlinear." not in name:
                out[name] = value
            continue
        prefix, kind = name.split(".qlinear.")
        parts = [grads[f"{prefix}.{q}linear.{kind}"] for q in "qkv"]
        out[f"{prefix}.in_proj_{kind}"] = torch.cat(parts, dim=dim)
    return out


# --------------------------------------------------------------------------------------------------
# The sections: each returns ({method: closure}, {method: error}, {method: check max abs diff})


def train_methods(x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Fn], dict[str, str], dict[str, float]]:
    """manual and autograd training steps; checked first to give the same loss and gradients."""
    models = build_pair()
    results = {}
    for backend, model in models.items():
        loss = LOSSES[backend](model(x), y)
        loss.backward()
        results[backend] = {"loss": loss.detach(), **{k: p.grad.clone() for k, p in model.named_parameters()}}
        model.zero_grad(set_to_none=True)
    diff = _max_diff(results["manual"], results["autograd"], "training step")
    optimizers = {backend: make_optimizer(models[backend], "sgd", LR) for backend in BACKENDS}
    fns = {b: (lambda b=b: train_step(models[b], optimizers[b], LOSSES[b], x, y)) for b in BACKENDS}
    return fns, {}, {"manual": diff, "autograd": 0.0}


def per_sample_methods(
    x: torch.Tensor, y: torch.Tensor, meta: dict[str, Any]
) -> tuple[dict[str, Fn], dict[str, str], dict[str, float]]:
    """manualbp's per_sample_grads, torch.func, Opacus's GradSampleModule (plain twin, DPMultiheadAttention twin),
    and a plain forward + backward of the twin; each peer checked against manualbp first."""
    from opacus import GradSampleModule

    pair = build_pair()
    manual, twin = pair["manual"], pair["autograd"]
    loss_m, loss_t = manualbp.functional.cross_entropy, torch.nn.functional.cross_entropy
    fns: dict[str, Fn] = {}
    errors: dict[str, str] = {}
    diffs: dict[str, float] = {}

    def manualbp_grad_sample() -> None:
        manual.zero_grad(set_to_none=True)
        with manualbp.per_sample_grads(manual, "mean"):
            loss_m(manual(x), y).backward()

    manualbp_grad_sample()
    reference = {k: p.grad_sample.clone() for k, p in manual.named_parameters()}
    fns["manualbp_grad_sample"] = manualbp_grad_sample
    diffs["manualbp_grad_sample"] = 0.0

    def add(name: str, build: Callable[[], tuple[Fn, Callable[[], dict[str, torch.Tensor]], Any]]) -> None:
        """Build a peer (its closure, a reader of its per-sample gradients, its network or None), check that the
        network computes the twin's logits, run it once, check its per-sample gradients."""
        try:
            fn, read, model = build()
            if model is not None and (diff := _logits_diff(model, twin, x)) > TOL["atol"]:
                raise Failed(f"its network computes other logits than the twin (max abs diff {diff:.2g})")
            fn()
            diffs[name] = _max_diff(read(), reference, name)
        except Exception as error:  # a peer's failure is a row, not a crash
            errors[name] = _one_line(error)
            print(f"  per_sample {name}: {errors[name]}", flush=True)
        else:
            fns[name] = fn

    def torch_func():
        func_model = copy.deepcopy(twin)
        params = {k: v.detach() for k, v in func_model.named_parameters()}
        per_sample_grad = _vmap_per_sample_grad(func_model)
        out: dict[str, dict[str, torch.Tensor]] = {}

        def torch_func_vmap() -> None:
            out["grads"] = per_sample_grad(params, x, y)

        return torch_func_vmap, lambda: out["grads"], None

    def opacus(model: torch.nn.Module, key: str):
        def build():
            gsm = GradSampleModule(copy.deepcopy(model))
            meta.setdefault("opacus_hooked_modules", {})[key] = [
                type(m).__name__ for m in gsm.iterate_submodules(gsm._module)
            ]

            def step() -> None:
                gsm.zero_grad(set_to_none=True)
                loss_t(gsm(x), y).backward()

            grads = lambda: _merge_qkv({k: p.grad_sample for k, p in gsm._module.named_parameters()}, 1)  # noqa: E731
            return step, grads, gsm._module

        return build

    add("torch_func_vmap", torch_func)
    add("opacus_gsm", opacus(twin, "opacus_gsm"))
    add("opacus_gsm_dpmha", lambda: opacus(dpmha(twin), "opacus_gsm_dpmha")())
    add("opacus_gsm_dpmha_seqfirst", lambda: opacus(dpmha(twin, seq_first=True), "opacus_gsm_dpmha_seqfirst")())

    plain = copy.deepcopy(twin)

    def autograd_fwd_bwd() -> None:
        plain.zero_grad(set_to_none=True)
        loss_t(plain(x), y).backward()

    fns["autograd_fwd_bwd"] = autograd_fwd_bwd
    return fns, errors, diffs


def dp_methods(x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Fn], dict[str, str], dict[str, float]]:
    """manualbp's DP-SGD step and Opacus's make_private in each mode, on the twin and on the twin with
    DPMultiheadAttention; each Opacus step's clipped mean without noise checked against manualbp's first."""
    pair = build_pair()
    manual, twin = pair["manual"], pair["autograd"]
    batch = len(x)
    fns: dict[str, Fn] = {}
    errors: dict[str, str] = {}
    diffs: dict[str, float] = {}

    def manualbp_step(model: torch.nn.Module, noise: float, generator: torch.Generator | None = None) -> Fn:
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with manualbp.clip_per_sample(model, CLIP, loss_reduction="sum"):
                manualbp.functional.cross_entropy(model(x), y, reduction="sum").backward()
            add_noise(model.parameters(), noise, CLIP, batch, generator=generator)
            optimizer.step()

        return step

    # the reference: manualbp's clipped sum / batch without noise, before any update
    check_model = copy.deepcopy(manual)
    check_model.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(check_model, CLIP, loss_reduction="sum"):
        manualbp.functional.cross_entropy(check_model(x), y, reduction="sum").backward()
    add_noise(check_model.parameters(), 0.0, CLIP, batch)
    reference = {k: p.grad.clone() for k, p in check_model.named_parameters()}
    fns["manualbp_dp"] = manualbp_step(copy.deepcopy(manual), NOISE, torch.Generator().manual_seed(0))
    diffs["manualbp_dp"] = 0.0

    variants: dict[str, Callable[[], torch.nn.Module]] = {
        "": lambda: twin,
        "_dpmha": lambda: dpmha(twin),
        "_dpmha_seqfirst": lambda: dpmha(twin, seq_first=True),
    }
    for suffix, make in variants.items():
        for mode in OPACUS_MODES:
            name = f"opacus_{mode}{suffix}"
            try:
                model = make()
                if (diff := _logits_diff(model, twin, x)) > TOL["atol"]:
                    raise Failed(f"its network computes other logits than the twin (max abs diff {diff:.2g})")
                # the check: σ = 0, one backward, pre_step (clip, no noise, scale): p.grad is the clipped mean
                module, optimizer, criterion = _opacus_private(model, mode, (x, y), noise=0.0)
                optimizer.zero_grad(set_to_none=True)
                criterion(module(x), y).backward()
                optimizer.pre_step()
                got = _merge_qkv({k: p.grad for k, p in module._module.named_parameters()}, 0)
                diffs[name] = _max_diff(got, reference, f"{name} clipped mean")
                module, optimizer, criterion = _opacus_private(model, mode, (x, y))
            except Exception as error:
                errors[name] = _one_line(error)
                print(f"  dp_step {name}: {errors[name]}", flush=True)
                continue

            def step(module=module, optimizer=optimizer, criterion=criterion) -> None:
                optimizer.zero_grad(set_to_none=True)
                criterion(module(x), y).backward()
                optimizer.step()

            fns[name] = step
    return fns, errors, diffs


# --------------------------------------------------------------------------------------------------
# Timing, rows, targets


#: section -> (the method every ratio divides by, the methods in table order)
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("autograd", ("manual", "autograd")),
    "per_sample": (
        "manualbp_grad_sample",
        (
            "manualbp_grad_sample",
            "torch_func_vmap",
            "opacus_gsm",
            "opacus_gsm_dpmha",
            "opacus_gsm_dpmha_seqfirst",
            "autograd_fwd_bwd",
        ),
    ),
    "dp_step": (
        "manualbp_dp",
        ("manualbp_dp", *(f"opacus_{m}{s}" for s in ("", "_dpmha", "_dpmha_seqfirst") for m in OPACUS_MODES)),
    ),
}


class _Raised(Exception):
    """A method that raised while timed (``_guarded``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def time_section(
    section: str,
    fns: dict[str, Fn],
    errors: dict[str, str],
    diffs: dict[str, float],
    batch: int,
    reps: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Time the section's methods interleaved; one row per method (its error where it has one). A method that
    raises while timed is dropped with its error and the others are timed again."""
    reference, order = SECTIONS[section]
    while True:
        try:
            times = time_interleaved(fns, reps, warmup)
            break
        except _Raised as raised:  # a peer that ran once, then failed
            if raised.name == reference:
                raise
            errors[raised.name] = raised.message
            del fns[raised.name]
    base = statistics.median(times[reference])
    rows = []
    for method in order:
        row: dict[str, Any] = {"section": section, "method": method, "batch": batch}
        if method in errors:
            row["error"] = errors[method]
        else:
            stats = summarize_ms(times[method])
            row.update(
                ms=stats["median"],
                p25_ms=stats["p25"],
                p75_ms=stats["p75"],
                ratio=stats["median"] / base,
                reference=reference,
                reps=reps,
                check_max_abs_diff=diffs.get(method),
            )
            if section == "train" and method == "manual":
                row["pair_ratio_median"] = statistics.median(m / a for m, a in zip(times["manual"], times["autograd"]))
        rows.append(row)
    return rows


def _guarded(name: str, fn: Fn) -> Fn:
    """``fn``, raising _Raised (naming the method) where it raises, so that time_section can drop it."""

    def call() -> object:
        try:
            return fn()
        except Exception as error:
            raise _Raised(name, _one_line(error)) from error

    return call


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One target per section: the training step's ratio <= 1.10; manualbp's per-sample gradients faster than
    torch.func and every Opacus configuration that ran; manualbp's DP step faster than Opacus's fastest mode."""
    by = {(r["section"], r["method"]): r for r in rows}
    ran = [r for r in rows if "error" not in r]
    out = []
    manual = by[("train", "manual")]
    if "error" not in manual:
        out.append(
            {
                "target": f"training step manual / autograd <= {TRAIN_TARGET}",
                "section": "train",
                "value": manual["ratio"],
                "threshold": TRAIN_TARGET,
                "met": manual["ratio"] <= TRAIN_TARGET,
                "against": "autograd",
            }
        )
    peers = [r for r in ran if r["section"] == "per_sample" and r["method"].startswith(("torch_func", "opacus"))]
    if peers:
        fastest = min(peers, key=lambda r: r["ms"])
        out.append(
            {
                "target": "per-sample gradients: manualbp faster than torch.func and Opacus",
                "section": "per_sample",
                "value": 1 / fastest["ratio"],  # manualbp / the fastest peer
                "threshold": 1.0,
                "met": fastest["ratio"] > 1.0,
                "against": fastest["method"],
            }
        )
    opacus = [r for r in ran if r["section"] == "dp_step" and r["method"].startswith("opacus")]
    if opacus:
        fastest = min(opacus, key=lambda r: r["ms"])
        out.append(
            {
                "target": "DP-SGD step: manualbp faster than Opacus's fastest mode",
                "section": "dp_step",
                "value": 1 / fastest["ratio"],  # manualbp / Opacus's fastest
                "threshold": 1.0,
                "met": fastest["ratio"] > 1.0,
                "against": fastest["method"],
            }
        )
    return out


def format_table(rows: Sequence[dict[str, Any]], goals: Sequence[dict[str, Any]]) -> str:
    header = f"{'section':<10} {'method':<31} {'ms':>8} {'(p25-p75)':>17} {'ratio':>6}  {'vs':<20} {'check |Δ|':>9}"
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        if previous is not None and r["section"] != previous:
            lines.append("")
        previous = r["section"]
        if "error" in r:
            error = r["error"] if len(r["error"]) <= 100 else r["error"][:97] + "..."
            lines.append(f"{r['section']:<10} {r['method']:<31} failed: {error}")
            continue
        spread = f"({r['p25_ms']:.1f}-{r['p75_ms']:.1f})"
        check = f"{r['check_max_abs_diff']:.1e}" if r.get("check_max_abs_diff") is not None else "-"
        lines.append(
            f"{r['section']:<10} {r['method']:<31} {r['ms']:>8.1f} {spread:>17} {r['ratio']:>6.3f}  "
            f"{r['reference']:<20} {check:>9}"
        )
    lines.append("")
    for goal in goals:
        lines.append(
            f"target: {goal['target']}: {goal['value']:.3f} (against {goal['against']}): "
            f"{'met' if goal['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {BATCH}, quick 8)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per method (default 30, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per method (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="a tiny batch and few repetitions: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows, targets} to this JSON file")
    opts = parser.parse_args(argv)
    batch = opts.batch if opts.batch is not None else (8 if opts.quick else BATCH)
    reps = opts.reps if opts.reps is not None else (2 if opts.quick else 30)
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 3)
    if batch < 1 or reps < 1 or warmup < 0:
        parser.error("--batch and --reps must be positive, --warmup non-negative")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    meta: dict[str, Any] = machine_meta(
        "bench_vit.py", argv, batch=batch, reps=reps, warmup=warmup, noise_multiplier=NOISE, max_grad_norm=CLIP
    )
    meta["opacus"] = _version("opacus")
    meta["torchvision"] = _version("torchvision")
    print(
        f"torch {torch.__version__}, opacus {meta['opacus']}, {torch.get_num_threads()} CPU threads, float32, "
        f"vit on input {IN_SHAPE}, batch {batch}, {reps} interleaved timed calls per method after {warmup} warm-up",
        flush=True,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *IN_SHAPE), generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    meta["parameters"] = sum(p.numel() for p in build_pair()["manual"].parameters())
    meta["checks"], meta["loadavg_1min"] = {}, {}
    rows: list[dict[str, Any]] = []
    builders = {
        "train": lambda: train_methods(x, y),
        "per_sample": lambda: per_sample_methods(x, y, meta),
        "dp_step": lambda: dp_methods(x, y),
    }
    with warnings.catch_warnings():
        # Opacus's hooks on a model whose input needs no gradient, secure RNG off, and the like: expected here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", module="opacus")
        # torch.func's vmap of the CPU flash attention (forward and backward) falls back to a loop over the batch
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        for section, build in builders.items():
            load_before = os.getloadavg()[0]
            fns, errors, diffs = build()
            fns = {name: _guarded(name, fn) for name, fn in fns.items()}
            rows += time_section(section, fns, errors, diffs, batch, reps, warmup)
            meta["checks"][section] = diffs
            meta["loadavg_1min"][section] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            print(f"  measured {section} (check max abs diffs: {diffs})", flush=True)
    goals = targets(rows)
    print(f"\ncpu: {meta['cpu']}, {meta['parameters']} parameters")
    print(format_table(rows, goals))
    print(
        "\nratio = median / the median of the method in 'vs' (same section); check |Δ| = max abs difference to "
        "manualbp (train: gradients to autograd's; dp_step: clipped mean without noise)."
    )
    result = {"meta": meta, "rows": rows, "targets": goals}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
