"""Per-sample gradients and DP-SGD steps: manualbp's hand-written backward against torch.func, BackPACK and Opacus.

For each model (``mlp800x800`` = ``manualbp.models.mlp(hidden=(800, 800))``, ``lenet5``, on 1x28x28 inputs; on
request, ``--models resnet18_gn``: torchvision's resnet18 with 10 classes, its BatchNorm replaced by GroupNorm
as Opacus's ``ModuleValidator.fix`` does (``manualbp.per_sample.batch_norm_to_group_norm``: gcd(32, C) groups),
on 3x32x32 inputs, ``resnet18_gn`` below) and each batch size (32 and 128), a batch of float32 inputs with
random labels, all in one process, the same weights on every side (both backends built from one seed, their
state dicts checked equal), every method on its own copy of the model (a step of one never changes another's
weights):

* ``plain_autograd``: one training step of the torch.nn twin (zero grads, forward,
  ``torch.nn.functional.cross_entropy``, backward, SGD update), the denominator of every ratio;
* ``plain_manual``: the same step of the manual network (manualbp's cross entropy), an extra row;
* ``manualbp_grad_sample``: the manual network's forward and backward inside ``manualbp.per_sample_grads``
  (``p.grad_sample`` (N, *p.shape) and ``p.grad``), no update;
* ``manualbp_clip``: a whole DP-SGD step of the manual network: the backward of the summed loss inside
  ``manualbp.clip_per_sample(model, 1.0, loss_reduction="sum")`` (the clipped sum in ``p.grad``),
  Gaussian noise σ = 1 and division by the expected batch size (= the batch) by
  ``manualbp.per_sample.add_noise``, SGD update;
* ``opacus_hooks`` and ``opacus_ghost``: a full DP-SGD step of the twin made private by Opacus's
  ``PrivacyEngine.make_private`` (σ = 1, C = 1, expected batch size = the batch) with
  ``grad_sample_mode="hooks"`` (per-sample gradients materialised, then clipped) and ``"ghost"`` (ghost
  clipping: norms in a first backward, a second backward of the reweighted loss);
* ``manualbp_clip_without_noise``: ``manualbp_clip`` with σ = 0 (no normals drawn), an extra row: the
  difference to ``manualbp_clip`` is what drawing the noise costs;
* ``opacus_hooks_grad_sample``: Opacus's per-sample method alone, an extra row: the twin wrapped in
  ``GradSampleModule`` (hooks), forward and backward (``p.grad_sample``), no clipping, no update;
* ``backpack_batchgrad``: the twin's forward and backward under BackPACK's ``BatchGrad`` (``p.grad_batch``);
* ``torch_func_vmap``: the twin's per-sample gradients by ``torch.func.vmap(grad(...))``.

A peer that cannot run a model is left out of that model's rows, with the reason printed and kept in the
JSON's meta (``UNSUPPORTED``): BackPACK's ``BatchGrad`` on ``resnet18_gn`` (it has no GroupNorm extension, so
GroupNorm's parameters would get no ``grad_batch``).

The methods run interleaved: ``--warmup`` untimed calls of each, then ``--reps`` repetitions, each one call
of every method in an order that rotates by one every repetition, so a slow patch of the (shared) machine
hits all of them; Python's garbage collector is paused while timing. Reported per (model, batch, method):
``ms``, the median wall time (``time.perf_counter``), its interquartile range ``p25_ms``-``p75_ms``, and
``ratio_to_plain`` = median / the median of ``plain_autograd`` of the same model and batch.

Targets, marked in the table: ``manualbp_clip`` (a whole DP-SGD step) <= 1.30x ``plain_autograd``, and
``manualbp_grad_sample`` faster than every peer's per-sample method (``backpack_batchgrad``,
``torch_func_vmap``, ``opacus_hooks_grad_sample``; those that run the model), on every row. The table also
gives ``manualbp_clip`` / the faster of ``opacus_hooks`` and ``opacus_ghost`` (Opacus's fastest DP step).

Before timing, each (model, batch) is checked (float32 tolerances): the per-sample gradients of
``manualbp_grad_sample`` against torch.func's, and the gradient of ``manualbp_clip`` without noise (σ = 0:
the clipped sum over the batch size) against the clipped mean of Opacus's hooks (``pre_step``, σ = 0).

    python experiments/bench_per_sample.py [--quick] [--models mlp800x800 lenet5 resnet18_gn] [--batches 32 128]
                                           [--reps 30] [--warmup 3] [--threads N]
                                           [--json experiments/results/bench_per_sample.json]

prints a table, and with ``--json PATH`` writes ``{"meta": {...}, "rows": [...]}``: one row per (model,
batch, method) with the keys model, batch, method, ms, ratio_to_plain (and p25_ms, p75_ms, reps); ``meta``
holds the versions, threads, machine, cores, date, the 1-minute load average before and after each (model, batch),
the checks' max abs differences, and (only where a peer was left out) its reason under ``skipped``. The default
models are ``mlp800x800`` and ``lenet5``; ``resnet18_gn`` runs when named.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _common import assert_same_weights, build_pair, cpu_name, summarize_ms, write_json
from torch.func import functional_call, grad, vmap
from torchvision.models.resnet import BasicBlock, ResNet

import manualbp
from manualbp.per_sample import add_noise

IN_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
LR = 0.01
NOISE, CLIP = 1.0, 1.0
MODELS = ("mlp800x800", "lenet5")
#: Models run only when named with --models, and their input shape (the others: IN_SHAPE).
EXTRA_MODELS = ("resnet18_gn",)
IN_SHAPES = {"resnet18_gn": (3, 32, 32)}
BATCHES = (32, 128)

#: The methods of the spec, in the order of the table and the JSON rows.
SPEC_METHODS = (
    "plain_autograd",
    "manualbp_grad_sample",
    "manualbp_clip",
    "opacus_hooks",
    "opacus_ghost",
    "backpack_batchgrad",
    "torch_func_vmap",
)
#: Extra rows: the manual plain step, Opacus's per-sample method without the DP step, and manualbp's DP step
#: without the noise (what drawing it costs).
EXTRA_METHODS = ("plain_manual", "opacus_hooks_grad_sample", "manualbp_clip_without_noise")
METHODS = SPEC_METHODS + EXTRA_METHODS
#: The peers' per-sample methods, which ``manualbp_grad_sample`` must beat.
PEER_PER_SAMPLE = ("backpack_batchgrad", "torch_func_vmap", "opacus_hooks_grad_sample")
CLIP_TARGET = 1.30  # manualbp_clip / plain_autograd
#: Opacus's DP steps; manualbp_clip is compared with the faster.
OPACUS_DP = ("opacus_hooks", "opacus_ghost")
#: (model, method) -> why the method cannot run that model: left out of its rows, the reason printed.
UNSUPPORTED = {
    ("resnet18_gn", "backpack_batchgrad"): (
        "BackPACK's BatchGrad has no GroupNorm extension: GroupNorm's weight and bias get no grad_batch"
    ),
}


def in_shape(name: str) -> tuple[int, ...]:
    """The input shape (one sample) of the model ``name``."""
    return IN_SHAPES.get(name, IN_SHAPE)


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's ``BasicBlock`` with its residual sum out of place (``out + identity``, the same values):
    Opacus's hooks wrap each hooked layer's output in a view that its in-place ``out += identity`` may not
    modify (RuntimeError "Output 0 of BackwardHookFunction is a view and is being modified inplace")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet18_gn(num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """torchvision's resnet18 (``ResNet(BasicBlock, [2, 2, 2, 2])``, its initialisation) with its BatchNorm
    replaced by GroupNorm(gcd(32, C), C) as Opacus's ``ModuleValidator.fix`` does
    (``manualbp.per_sample.batch_norm_to_group_norm``), its ReLUs and residual sums out of place (what
    Opacus's hooks need; the same values): a torch.nn model, ``manualbp.convert(..., strict=True)`` turns
    every layer manual."""
    model = ResNet(OutOfPlaceBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return manualbp.per_sample.batch_norm_to_group_norm(model)


def build(name: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """{"manual": model, "autograd": twin} of the model ``name`` (float32): ``_common.build_pair`` for the
    default models; for ``resnet18_gn`` the twin built from ``seed`` and the manual model converted from a
    copy of it (strict: every layer manual)."""
    if name != "resnet18_gn":
        return build_pair(name, in_shape(name), seed)
    torch.manual_seed(seed)
    twin = resnet18_gn().float()
    manual = manualbp.convert(copy.deepcopy(twin), strict=True)
    assert_same_weights(manual, twin)
    return {"manual": manual, "autograd": twin}


def _opacus_private(
    model: torch.nn.Module,
    mode: str,
    data: tuple[torch.Tensor, torch.Tensor],
    noise: float = NOISE,
    max_grad_norm: float = CLIP,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[..., torch.Tensor]]:
    """``(module, optimizer, criterion)`` of Opacus's ``make_private`` on a copy of ``model`` (clipping bound
    ``max_grad_norm``); a loader of one batch over ``data`` gives the expected batch size (= the batch; the
    batches are fed directly)."""
    from opacus import PrivacyEngine

    dataset = torch.utils.data.TensorDataset(*data)
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(data[0]))
    module = copy.deepcopy(model)
    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure RNG off, and the like: expected here
        engine = PrivacyEngine(accountant="rdp")
        made = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=noise,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=mode,
            poisson_sampling=False,
        )
    if mode == "ghost":
        module, optimizer, criterion, _ = made
    else:
        module, optimizer, _ = made
    return module, optimizer, criterion


def _vmap_per_sample_grad(model: torch.nn.Module) -> Callable[..., dict[str, torch.Tensor]]:
    """``f(params, x, y)`` -> {name: (N, *p.shape)}: per-sample gradients of the one-sample
    cross entropy of ``model`` by ``torch.func.vmap(grad(...))``."""

    def sample_loss(p, x_n, y_n):
        out = functional_call(model, p, (x_n.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, y_n.unsqueeze(0))

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))


def methods(name: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Every timed method for the model ``name``, as a closure doing one call on the batch (x, y); those in
    ``UNSUPPORTED`` for ``name`` are left out (and their models not built)."""
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad
    from opacus import GradSampleModule

    batch = len(x)
    skip = {method for model, method in UNSUPPORTED if model == name}
    pair = build(name)
    manual, twin = pair["manual"], pair["autograd"]
    loss_m, loss_t = manualbp.functional.cross_entropy, torch.nn.functional.cross_entropy

    plain_model = copy.deepcopy(twin)
    plain_sgd = torch.optim.SGD(plain_model.parameters(), lr=LR)
    manual_model = copy.deepcopy(manual)
    manual_sgd = torch.optim.SGD(manual_model.parameters(), lr=LR)
    gs_model = copy.deepcopy(manual)
    clip_model = copy.deepcopy(manual)
    clip_sgd = torch.optim.SGD(clip_model.parameters(), lr=LR)
    noise_gen = torch.Generator().manual_seed(0)
    hooks = _opacus_private(twin, "hooks", (x, y))
    ghost = _opacus_private(twin, "ghost", (x, y))
    opacus_gsm = GradSampleModule(copy.deepcopy(twin))
    if "backpack_batchgrad" not in skip:
        backpack_model = extend(copy.deepcopy(twin))
        backpack_loss = extend(torch.nn.CrossEntropyLoss())
    func_model = copy.deepcopy(twin)
    params = {k: v.detach() for k, v in func_model.named_parameters()}
    per_sample_grad = _vmap_per_sample_grad(func_model)

    def plain_autograd():
        plain_sgd.zero_grad(set_to_none=True)
        loss_t(plain_model(x), y).backward()
        plain_sgd.step()

    def plain_manual():
        manual_sgd.zero_grad(set_to_none=True)
        loss_m(manual_model(x), y).backward()
        manual_sgd.step()

    def manualbp_grad_sample():
        gs_model.zero_grad(set_to_none=True)
        with manualbp.per_sample_grads(gs_model, "mean"):
            loss_m(gs_model(x), y).backward()

    def dp_step(noise: float):
        def step():
            clip_sgd.zero_grad(set_to_none=True)
            with manualbp.clip_per_sample(clip_model, CLIP, loss_reduction="sum"):
                loss_m(clip_model(x), y, reduction="sum").backward()
            add_noise(clip_model.parameters(), noise, CLIP, batch, generator=noise_gen)
            clip_sgd.step()

        return step

    def opacus_step(module, optimizer, criterion):
        def step():
            optimizer.zero_grad(set_to_none=True)
            criterion(module(x), y).backward()
            optimizer.step()

        return step

    def opacus_hooks_grad_sample():
        opacus_gsm.zero_grad(set_to_none=True)
        loss_t(opacus_gsm(x), y).backward()

    def backpack_batchgrad():
        backpack_model.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            backpack_loss(backpack_model(x), y).backward()

    def torch_func_vmap():
        return per_sample_grad(params, x, y)

    fns = {
        "plain_autograd": plain_autograd,
        "manualbp_grad_sample": manualbp_grad_sample,
        "manualbp_clip": dp_step(NOISE),
        "opacus_hooks": opacus_step(*hooks),
        "opacus_ghost": opacus_step(*ghost),
        "backpack_batchgrad": backpack_batchgrad,
        "torch_func_vmap": torch_func_vmap,
        "plain_manual": plain_manual,
        "opacus_hooks_grad_sample": opacus_hooks_grad_sample,
        "manualbp_clip_without_noise": dp_step(0.0),
    }
    assert tuple(fns) == METHODS
    return {method: fn for method, fn in fns.items() if method not in skip}


def check(name: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Check, before timing, that manualbp computes what the peers do (float32 tolerances, AssertionError
    otherwise): its per-sample gradients against torch.func's, and its DP-SGD gradient without noise
    (clipped sum / batch, as ``manualbp_clip`` computes it with σ = 0) against Opacus hooks' clipped mean.
    Returns the max abs differences."""
    tol = dict(rtol=1e-4, atol=1e-5)
    pair = build(name)
    manual, twin = pair["manual"], pair["autograd"]

    with manualbp.per_sample_grads(manual, "mean"):
        manualbp.functional.cross_entropy(manual(x), y).backward()
    params = {k: v.detach() for k, v in twin.named_parameters()}
    reference = _vmap_per_sample_grad(twin)(params, x, y)
    grad_sample_diff = 0.0
    for k, p in manual.named_parameters():
        torch.testing.assert_close(p.grad_sample, reference[k], **tol, msg=lambda m, k=k: f"grad_sample {k}: {m}")
        grad_sample_diff = max(grad_sample_diff, (p.grad_sample - reference[k]).abs().max().item())

    manual.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(manual, CLIP, loss_reduction="sum"):
        manualbp.functional.cross_entropy(manual(x), y, reduction="sum").backward()
    add_noise(manual.parameters(), 0.0, CLIP, len(x))
    module, optimizer, criterion = _opacus_private(twin, "hooks", (x, y), noise=0.0)
    optimizer.zero_grad(set_to_none=True)
    criterion(module(x), y).backward()
    optimizer.pre_step()  # clip, (no) noise, scale: p.grad is the clipped mean
    opacus = dict(module._module.named_parameters())
    clip_diff = 0.0
    for k, p in manual.named_parameters():
        torch.testing.assert_close(p.grad, opacus[k].grad, **tol, msg=lambda m, k=k: f"clipped grad {k}: {m}")
        clip_diff = max(clip_diff, (p.grad - opacus[k].grad).abs().max().item())
    return {"grad_sample_vs_torch_func_max_abs": grad_sample_diff, "clipped_vs_opacus_max_abs": clip_diff}


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call for each of ``fns``: ``warmup`` untimed calls each, then ``reps`` repetitions of
    one timed call each, the order rotated by one every repetition (A B C, B C A, C A B, ...). Python's
    garbage collector is paused while timing, as ``timeit`` does."""
    order = list(fns)
    for _ in range(warmup):
        for key in order:
            fns[key]()
    times: dict[str, list[float]] = {key: [] for key in order}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(reps):
            shift = rep % len(order)
            for key in order[shift:] + order[:shift]:
                start = time.perf_counter()
                fns[key]()
                times[key].append((time.perf_counter() - start) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def bench_config(name: str, batch: int, reps: int, warmup: int, seed: int = 0) -> tuple[list[dict], dict]:
    """Check and time every method on one (model, batch): (its rows, its meta entry)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *in_shape(name)), generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    checks = check(name, x, y)
    fns = methods(name, x, y)
    skipped = {method: reason for (model, method), reason in UNSUPPORTED.items() if model == name}
    for method, reason in skipped.items():
        print(f"  {name}: {method} left out: {reason}", flush=True)
    load_before = os.getloadavg()[0]
    times = time_interleaved(fns, reps, warmup)
    load_after = os.getloadavg()[0]
    base = statistics.median(times["plain_autograd"])
    rows = []
    for method in (m for m in METHODS if m in times):
        stats = summarize_ms(times[method])
        rows.append(
            {
                "model": name,
                "batch": batch,
                "method": method,
                "ms": stats["median"],
                "ratio_to_plain": stats["median"] / base,
                "p25_ms": stats["p25"],
                "p75_ms": stats["p75"],
                "reps": reps,
            }
        )
    meta = {
        "model": name,
        "batch": batch,
        "checks": checks,
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
    }
    if skipped:
        meta["skipped"] = skipped
    return rows, meta


def targets(rows: Sequence[dict]) -> dict[tuple[str, int], dict[str, object]]:
    """Per (model, batch): whether ``manualbp_clip`` <= 1.30x ``plain_autograd`` (``clip_ok``), whether
    ``manualbp_grad_sample`` is faster than the fastest peer per-sample method that ran (``grad_sample_ok``),
    and ``manualbp_clip`` / the faster Opacus DP step (``clip_vs_opacus``, ``fastest_opacus``)."""
    by_config: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        by_config.setdefault((row["model"], row["batch"]), {})[row["method"]] = row
    out = {}
    for config, got in by_config.items():
        peer = min((m for m in PEER_PER_SAMPLE if m in got), key=lambda m: got[m]["ms"])
        opacus = min(OPACUS_DP, key=lambda m: got[m]["ms"])
        out[config] = {
            "clip_ratio": got["manualbp_clip"]["ratio_to_plain"],
            "clip_ok": got["manualbp_clip"]["ratio_to_plain"] <= CLIP_TARGET,
            "fastest_peer": peer,
            "grad_sample_vs_peer": got["manualbp_grad_sample"]["ms"] / got[peer]["ms"],
            "grad_sample_ok": got["manualbp_grad_sample"]["ms"] < got[peer]["ms"],
            "fastest_opacus": opacus,
            "clip_vs_opacus": got["manualbp_clip"]["ms"] / got[opacus]["ms"],
        }
    return out


def format_table(rows: Sequence[dict]) -> str:
    """A readable table of the rows: medians with IQR, ratio to plain_autograd, the targets marked."""
    marks = targets(rows)
    header = f"{'model':<11} {'batch':>5} {'method':<25} {'ms (p25-p75)':>26} {'/ plain':>8}  target"
    lines = [header, "-" * (len(header) + 36)]
    previous = None
    for r in rows:
        config = (r["model"], r["batch"])
        if previous is not None and config != previous:
            lines.append("")
        previous = config
        mark = marks[config]
        target = ""
        if r["method"] == "manualbp_clip":
            target = (
                f"<= {CLIP_TARGET:.2f}x plain: {'yes' if mark['clip_ok'] else 'NO'}; "
                f"{mark['clip_vs_opacus']:.2f}x {mark['fastest_opacus']}"
            )
        elif r["method"] == "manualbp_grad_sample":
            target = (
                f"< fastest peer ({mark['fastest_peer']}, {mark['grad_sample_vs_peer']:.2f}x): "
                f"{'yes' if mark['grad_sample_ok'] else 'NO'}"
            )
        elif r["method"] in EXTRA_METHODS:
            target = "(extra row)"
        spread = f"({r['p25_ms']:.2f}-{r['p75_ms']:.2f})"
        lines.append(
            f"{r['model']:<11} {r['batch']:>5} {r['method']:<25} {r['ms']:>9.2f} {spread:>16} "
            f"{r['ratio_to_plain']:>8.2f}  {target}"
        )
    return "\n".join(lines)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS + EXTRA_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--reps", type=int, default=None, help="timed calls per method (default 30, quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per method (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows} to this JSON file")
    opts = parser.parse_args(argv)
    reps = opts.reps if opts.reps is not None else (5 if opts.quick else 30)
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 3)
    if reps < 1 or warmup < 0 or any(b < 1 for b in opts.batches):
        parser.error("--reps and --batches must be positive, --warmup non-negative")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32, input "
        f"{', '.join(f'{name} {in_shape(name)}' for name in opts.models)}, "
        f"{reps} interleaved timed calls per method after {warmup} warm-up calls",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    configs = []
    with warnings.catch_warnings():
        # the peers' module hooks (Opacus, BackPACK) on a model whose input needs no gradient: harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for name in opts.models:
            for batch in opts.batches:
                config_rows, config_meta = bench_config(name, batch, reps, warmup)
                rows += config_rows
                configs.append(config_meta)
                print(f"  measured {name} batch {batch} (checks: {config_meta['checks']})", flush=True)
    meta = {
        "torch": torch.__version__,
        "opacus": _version("opacus"),
        "backpack": _version("backpack-for-pytorch"),
        "threads": torch.get_num_threads(),
        "machine": cpu_name(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reps": reps,
        "warmup": warmup,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "configs": configs,
    }
    print(f"\ncpu: {meta['machine']}")
    print(format_table(rows))
    marks = targets(rows)
    clip_all = all(m["clip_ok"] for m in marks.values())
    gs_all = all(m["grad_sample_ok"] for m in marks.values())
    print(
        f"\n/ plain = median / plain_autograd median (same model and batch). Targets on every row: manualbp_clip "
        f"<= {CLIP_TARGET:.2f}x plain_autograd: {'met' if clip_all else 'NOT met'}; manualbp_grad_sample faster "
        f"than {', '.join(PEER_PER_SAMPLE)}: {'met' if gs_all else 'NOT met'}."
    )
    opacus_all = all(m["clip_vs_opacus"] < 1 for m in marks.values())
    print(
        f"manualbp_clip faster than the faster of {', '.join(OPACUS_DP)} on every row: {'yes' if opacus_all else 'NO'}."
    )
    result = {"meta": meta, "rows": rows}
    write_json(opts.json, result)
    return result


if __name__ == "__main__":
    main()
