"""Curvature quantities: ``manualbp.curvature`` against BackPACK 1.7.1, curvlinops and a plain autograd step.

For each model (``mlp800x800`` = ``manualbp.models.mlp(hidden=(800, 800))`` and ``lenet5`` on 1x28x28 inputs,
``resnet8`` on 3x32x32 inputs, below), each batch size (32 and 128) and each quantity (``QUANTITIES``:
``diag_ggn_exact``, ``diag_ggn_mc``, ``kfac``, ``kflr``, ``diag_h``, ``batch_l2``, ``sum_grad_squared``,
``variance``), a batch of float32 inputs with random labels, all in one process. Every model is built with the
torch backend (``torch.nn`` layers) from one seed, in eval mode; the manual network is ``manualbp.convert`` of a
copy of it (strict: every layer manual), its state dict checked equal. Every method runs on its own copy, and no
method changes the weights (no optimizer step), so all of them see the same network throughout:

* ``manualbp``: ``with manualbp.curvature(model, quantity): manualbp.functional.cross_entropy(model(x),
  y).backward()`` (forward and backward; ``p.<quantity>`` and ``p.grad`` on every parameter);
* ``backpack``: the BackPACK-extended copy (``extend(model)``, with ``use_converter=True`` for the residual
  network), ``with backpack(<Extension>()): extend(CrossEntropyLoss())(model(x), y).backward()``;
* ``curvlinops``: for ``kfac`` and ``kflr`` only, ``KFACLinearOperator(model, CrossEntropyLoss(), params,
  [(x, y)], fisher_type="mc" | "type-2", check_deterministic=False, num_data=N,
  num_per_example_loss_terms=1).compute_kronecker_factors()`` (an operator made afresh every call, its
  constructor is cheap with the data's size given; the call runs the forward and the backward(s)). curvlinops
  3.0.1 has no exact diagonal GGN or MC-Fisher diagonal (its ``hutchinson_diag`` and ``xdiag`` are stochastic
  estimates of an operator's diagonal from matrix-vector products) and no first-order quantities, so it has
  no other row. Its KFAC takes Linear and Conv2d layers; its factors for a convolution are "KFAC-expand"
  (B = Σ over positions of the output gradients' outer products), BackPACK's and manualbp's sum the output
  gradient over positions first: on lenet5 and resnet8 it computes a related, not the same, quantity (the row
  is marked so). On resnet8 it gets the Linear and Conv2d parameters only (it rejects BatchNorm's).
* ``plain_autograd``: the forward and backward of the torch model with ``torch.nn.functional.cross_entropy``
  (``p.grad`` only), the denominator of ``manualbp / plain``.

``resnet8``: a small ResNet of torchvision's ``BasicBlock`` (its residual sum out of place,
``bench_per_sample.OutOfPlaceBasicBlock``, and its ReLUs too: no library's hooks see a tensor modified in place):
a 3x3 convolution 3 -> 16 with stride 2, BatchNorm, ReLU, 2x2 max pooling (8x8 maps), then one BasicBlock of 16
channels, one of 32 (stride 2, 4x4), one of 64 (stride 2, 2x2), 2x2 average pooling and Linear(64, 10). Its
BatchNorm is in eval mode (batch statistics mix the samples: neither library computes these quantities then),
with running statistics and affine parameters drawn from the seed so that it is no identity.

**Unsupported.** A method that raises on a (model, quantity) in the check below (manualbp's ``CurvatureError``,
a BackPACK ``NotImplementedError`` for a module it has no extension for, curvlinops's ``NotImplementedError``)
is not timed there: its row says ``unsupported`` and the JSON keeps the error's message.

**Checks** (before timing, each (model, batch, quantity)): manualbp's and BackPACK's attributes are compared
parameter by parameter (matched by name): the max abs difference and the max relative one (the abs difference
over the largest magnitude of BackPACK's tensor), ``match`` when the relative one is <= 1e-4 (float32 sums of
up to C = 10 columns). For the Monte-Carlo quantities (``diag_ggn_mc``, ``kfac``) both run with
``torch.manual_seed(SEED)`` right before ``backward()``: manualbp draws ``Categorical(probs=softmax(f))
.sample((M,))`` in the loss's backward as BackPACK does, so ``match`` says whether the draws coincide too. Where
BackPACK has no ``diag_h`` (resnet8: no extension for the residual sum) manualbp's ``diag_h`` is compared with
BackPACK's ``diag_ggn_exact``, which it equals on a network piecewise linear in each parameter (ReLU, linear
layers, pooling, BatchNorm in eval mode). curvlinops's ``kflr`` factors are compared with manualbp's on the
Linear layers (where both approximations coincide) up to the factors' scale conventions: with a = <A_c, A_m> /
<A_m, A_m> (and b for B), ``max_rel`` = max |A_c - a A_m| / max |A_c| (and B's), ``kron_scale`` = a·b (curvlinops's
A⊗B over manualbp's).

**Time.** All methods of one (model, batch), every quantity's, interleaved: ``--warmup`` untimed calls of each
(the check and memory calls before them warm up too), then ``--reps`` repetitions, each one call of every method
in an order rotated by one every repetition (``bench_per_sample.time_interleaved``, Python's garbage collector
paused), so a slow patch of the (shared) machine hits all of them. Reported: the median and the interquartile range
in ms, ``manualbp / BackPACK`` and ``manualbp / plain`` = ratios of the medians.

**Peak memory.** The CPU allocator keeps no peak (``torch.cuda.max_memory_allocated`` is CUDA-only),
``tracemalloc`` does not see torch's allocations, and a process's peak RSS (``resource.getrusage``) never goes
down, so it would need a fresh process per method and mixes in Python's and the libraries' own memory. Instead
each method's call (warm: after the check) runs inside ``torch.profiler.profile(profile_memory=True)``, which
records every allocation and free of torch's CPU allocator as a ``[memory]`` event with its signed size; the
events in time order are summed, and the maximum of the running sum is the method's **peak memory**: the most
bytes allocated since the call began, net of what it freed, at one time (activations, workspaces, temporaries,
the gradients and quantities it leaves). The allocator sizes only the blocks it handed out while a profiler was
recording (the free of an older block is no event, that of a block from an earlier profiled call is), so the
call is profiled twice and the second measured, each time after the method's outputs of the call before
(``p.grad``, the quantity's attributes) are deleted: every method is measured in its steady state, starting
from its model, the batch and what its previous call left, and the figure does not depend on the order of the
measurements. Buffers that oneDNN or the BLAS allocate outside torch's allocator are not seen (the same
kernels run for every method).

    python experiments/bench_curvature.py [--models mlp800x800 lenet5 resnet8] [--batches 32 128]
                                          [--quantities diag_ggn_exact ...] [--reps 10] [--warmup 0]
                                          [--threads 2] [--profile] [--out experiments/results/bench_curvature.json]

prints a Markdown table and writes ``{"meta": {...}, "rows": [...], "checks": [...]}`` to ``--out`` (default:
``bench_curvature.json`` in a new temporary folder, ``_common.output_folder``): one row per (model, batch,
quantity, method) with status ``ok`` (ms, p25_ms, p75_ms, reps, peak_bytes, peak_mib, ratio_to_plain, for
manualbp ratio_to_backpack, for curvlinops a note where its KFAC differs) or ``unsupported`` (reason), one
``plain_autograd`` row per (model, batch) (quantity null); one check per (model, batch, quantity, reference).
``meta`` is ``_common.machine_meta`` plus the peers' versions, the code measured (``source_state``: manualbp
changes often) and under ``configs`` each (model, batch)'s load averages before and after its timing. With
``--profile``, every row where manualbp's median exceeds BackPACK's is profiled (``torch.profiler``,
``profile_top``): the ops with the most self CPU time are printed and kept under its config's ``profiles``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import hashlib
import os
import subprocess
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from _common import (
    ARCHS,
    assert_same_weights,
    machine_meta,
    output_folder,
    peak_allocated_bytes,
    summarize_ms,
    write_json,
)
from bench_per_sample import OutOfPlaceBasicBlock, time_interleaved
from torch import nn
from torch.profiler import ProfilerActivity, profile

import manualbp
from manualbp.second_order import CurvatureError, curvature

IN_SHAPES = {"mlp800x800": (1, 28, 28), "lenet5": (1, 28, 28), "resnet8": (3, 32, 32)}
MODELS = tuple(IN_SHAPES)
#: the models with residual connections: BackPACK needs its converter (``extend(..., use_converter=True)``)
RESIDUAL = ("resnet8",)
NUM_CLASSES = 10
BATCHES = (32, 128)
QUANTITIES = ("diag_ggn_exact", "diag_ggn_mc", "kfac", "kflr", "diag_h", "batch_l2", "sum_grad_squared", "variance")
#: BackPACK's extension (``backpack.extensions``) of each quantity
EXTENSIONS = {
    "diag_ggn_exact": "DiagGGNExact",
    "diag_ggn_mc": "DiagGGNMC",
    "kfac": "KFAC",
    "kflr": "KFLR",
    "diag_h": "DiagHessian",
    "batch_l2": "BatchL2Grad",
    "sum_grad_squared": "SumGradSquared",
    "variance": "Variance",
}
#: the Monte-Carlo quantities, and their number of samples (BackPACK's default)
MC = ("diag_ggn_mc", "kfac")
MC_SAMPLES = 1
#: curvlinops's ``fisher_type`` of the quantities it computes (``KFACLinearOperator``)
CURVLINOPS = {"kfac": "mc", "kflr": "type-2"}
METHODS = ("manualbp", "backpack", "curvlinops")
PLAIN = "plain_autograd"
SEED = 0
TOLERANCE = 1e-4  # max relative difference of a match

Step = Callable[[], object]


def resnet8(num_classes: int = NUM_CLASSES, seed: int = SEED) -> nn.Module:
    """The small ResNet of the docstring (torch.nn layers, eval mode), its BatchNorm statistics and affine
    parameters drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)

    def down(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out))

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        OutOfPlaceBasicBlock(16, 16),
        OutOfPlaceBasicBlock(16, 32, 2, down(16, 32)),
        OutOfPlaceBasicBlock(32, 64, 2, down(32, 64)),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                c = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model.eval()


def build(name: str, seed: int = SEED) -> tuple[nn.Module, nn.Module]:
    """(torch model, manual model) of ``name``: the torch one built from ``seed`` (eval mode, float32), the manual
    one ``manualbp.convert(..., strict=True)`` of a copy, checked to have the same state dict."""
    torch.manual_seed(seed)
    twin = resnet8(seed=seed) if name == "resnet8" else ARCHS[name](IN_SHAPES[name], "autograd")
    twin = twin.float().eval()
    manual = manualbp.convert(copy.deepcopy(twin), strict=True).eval()
    assert_same_weights(manual, twin)
    return twin, manual


class Config:
    """One (model, batch): the batch, each method's copy of the model, and their steps."""

    def __init__(self, name: str, batch: int, seed: int = SEED) -> None:
        from backpack import extend  # type: ignore[import-untyped]

        gen = torch.Generator().manual_seed(seed)
        self.name, self.batch = name, batch
        self.x = torch.randn((batch, *IN_SHAPES[name]), generator=gen)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        twin, self.manual = build(name, seed)
        self.plain = copy.deepcopy(twin)
        self.kfac_model = copy.deepcopy(twin)
        self.backpack = extend(copy.deepcopy(twin), use_converter=name in RESIDUAL)
        self.backpack_loss = extend(nn.CrossEntropyLoss())
        # curvlinops's KFAC takes the parameters of its layers (Linear, Conv2d) only
        self.kfac_params = [
            p for m in self.kfac_model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) for p in m.parameters()
        ]
        self.kfac_partial = len(self.kfac_params) < len(list(self.kfac_model.parameters()))
        self.kfac_expand = any(isinstance(m, nn.Conv2d) for m in self.kfac_model.modules())

    # ---- the steps: forward and backward; ``seed``: torch.manual_seed(seed) right before backward() ----------

    def manualbp_step(self, quantity: str, seed: int | None = None) -> None:
        model = self.manual
        model.zero_grad(set_to_none=True)
        with curvature(model, quantity, mc_samples=MC_SAMPLES):
            loss = manualbp.functional.cross_entropy(model(self.x), self.y)
            if seed is not None:
                torch.manual_seed(seed)
            loss.backward()

    def backpack_step(self, quantity: str, seed: int | None = None) -> None:
        import backpack.extensions  # type: ignore[import-untyped]
        from backpack import backpack as backpack_context

        extension = getattr(backpack.extensions, EXTENSIONS[quantity])
        model = self.backpack
        model.zero_grad(set_to_none=True)
        with backpack_context(extension(mc_samples=MC_SAMPLES) if quantity in MC else extension()):
            loss = self.backpack_loss(model(self.x), self.y)
            if seed is not None:
                torch.manual_seed(seed)
            loss.backward()

    def curvlinops_operator(self, quantity: str) -> Any:
        """curvlinops's KFAC operator of ``quantity`` on this batch, its factors computed."""
        from curvlinops import KFACLinearOperator  # type: ignore[import-untyped]

        operator = KFACLinearOperator(
            self.kfac_model,
            nn.CrossEntropyLoss(),
            self.kfac_params,
            [(self.x, self.y)],
            check_deterministic=False,
            fisher_type=CURVLINOPS[quantity],
            mc_samples=MC_SAMPLES,
            num_data=self.batch,
            num_per_example_loss_terms=1,
        )
        operator.compute_kronecker_factors()
        return operator

    def plain_step(self) -> None:
        self.plain.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.plain(self.x), self.y).backward()

    def step(self, quantity: str | None, method: str) -> Step:
        """The timed call of ``method`` (``quantity`` None for the plain step)."""
        if method == PLAIN:
            return self.plain_step
        assert quantity is not None
        if method == "manualbp":
            return lambda: self.manualbp_step(quantity)
        if method == "backpack":
            return lambda: self.backpack_step(quantity)
        return lambda: self.curvlinops_operator(quantity)

    def clear(self, quantity: str | None, method: str) -> None:
        """Delete what an earlier call of ``method`` left (``p.grad`` and the quantity's attribute)."""
        model = {"manualbp": self.manual, "backpack": self.backpack, "curvlinops": self.kfac_model}.get(
            method, self.plain
        )
        for p in model.parameters():
            p.grad = None
            if quantity is not None and hasattr(p, quantity):
                delattr(p, quantity)
        gc.collect()

    def attributes(self, model: nn.Module, quantity: str) -> dict[str, Any]:
        """{name: p.<quantity>} of the parameters of ``model`` that have it."""
        return {k: getattr(p, quantity) for k, p in model.named_parameters() if hasattr(p, quantity)}


def _tensors(value: Any) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def compare(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """Max abs and relative differences of manualbp's attributes ``got`` against a peer's ``want`` (by parameter
    name; each factor of a Kronecker list); an error if the names or shapes differ."""
    if set(got) != set(want):
        raise AssertionError(f"the parameters with the quantity differ: {sorted(set(got) ^ set(want))}")
    max_abs = max_rel = 0.0
    for name in want:
        a, b = _tensors(got[name]), _tensors(want[name])
        if [t.shape for t in a] != [t.shape for t in b]:
            raise AssertionError(f"{name}: shapes {[t.shape for t in a]} != {[t.shape for t in b]}")
        for u, v in zip(a, b):
            diff = (u - v).abs().max().item()
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / max(v.abs().max().item(), 1e-30))
    return {"max_abs": max_abs, "max_rel": max_rel, "match": max_rel <= TOLERANCE}


def compare_kronecker_up_to_scale(config: Config, manual: dict[str, Any], operator: Any) -> dict[str, Any]:
    """curvlinops's factors (A, B) of every Linear layer's weight against manualbp's ``kflr`` [B, A], each up to
    its scale (see the docstring): ``max_rel`` after the best scale, ``kron_scale`` = a·b (the same for all
    layers when the conventions differ by a constant)."""
    state = operator.state_dict()
    max_rel, scales = 0.0, []
    for name, module in config.kfac_model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        b_m, a_m = manual[f"{name}.weight"]
        a_c, b_c = state["input_covariances"][name], state["gradient_covariances"][name]
        product = 1.0
        for c, m in ((a_c, a_m), (b_c, b_m)):
            scale = (c * m).sum() / (m * m).sum()
            max_rel = max(max_rel, ((c - scale * m).abs().max() / c.abs().max()).item())
            product *= scale.item()
        scales.append(product)
    return {"max_rel": max_rel, "kron_scale": scales, "match": max_rel <= TOLERANCE}


def peak_bytes(step: Step, clear: Callable[[], None]) -> int:
    """The maximum, over one call of ``step``, of the bytes torch's CPU allocator handed out since the call
    began and not yet freed (the docstring's peak memory): ``clear()`` and a profiled call twice, the second
    measured."""
    for _ in range(2):
        clear()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    return peak_allocated_bytes(prof)


def methods_of(quantity: str) -> tuple[str, ...]:
    """The methods that compute ``quantity``: manualbp, BackPACK, and curvlinops for its KFAC."""
    return METHODS if quantity in CURVLINOPS else tuple(m for m in METHODS if m != "curvlinops")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def check_quantity(config: Config, quantity: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Run manualbp, BackPACK (and curvlinops) once on ``quantity``, seeded alike: (the methods that cannot run it,
    with why; the checks of manualbp's attributes against the peers')."""
    unsupported: dict[str, str] = {}
    checks: list[dict[str, Any]] = []
    seed = SEED if quantity in MC else None
    common = {"model": config.name, "batch": config.batch, "quantity": quantity}
    try:
        config.manualbp_step(quantity, seed)
    except CurvatureError as error:
        unsupported["manualbp"] = _reason(error)
    manual = config.attributes(config.manual, quantity)
    reference = quantity
    try:
        config.backpack_step(quantity, seed)
    except NotImplementedError as error:
        unsupported["backpack"] = _reason(error)
        if quantity == "diag_h":  # diag_h is diag_ggn_exact on these (piecewise linear) networks
            reference = "diag_ggn_exact"
            config.backpack_step(reference)
    if quantity in CURVLINOPS:
        try:
            operator = config.curvlinops_operator(quantity)
        except NotImplementedError as error:
            unsupported["curvlinops"] = _reason(error)
    if "manualbp" in unsupported:
        return unsupported, checks
    if "backpack" not in unsupported or reference != quantity:
        checks.append(
            {
                **common,
                "against": f"backpack {EXTENSIONS[reference]}",
                **compare(manual, config.attributes(config.backpack, reference)),
                **({"seeded": seed, "mc_samples": MC_SAMPLES} if seed is not None else {}),
            }
        )
    if quantity == "kflr" and "curvlinops" not in unsupported:
        checks.append(
            {
                **common,
                "against": "curvlinops KFACLinearOperator type-2, Linear layers, up to scale",
                **compare_kronecker_up_to_scale(config, manual, operator),
            }
        )
    return unsupported, checks


def profile_top(step: Step, top: int = 12, calls: int = 3) -> list[dict[str, Any]]:
    """The ``top`` ops by self CPU time in one call of ``step``: after a warm call, ``calls`` profiled calls, each
    op's least self time over them (a slow patch of a shared machine inflates one call, rarely all), with its
    number of calls per step."""
    step()
    least: dict[str, tuple[float, int]] = {}
    for _ in range(calls):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        for e in prof.key_averages():
            ms = e.self_cpu_time_total / 1e3
            least[e.key] = (min(ms, least[e.key][0]) if e.key in least else ms, e.count)
    total = sum(ms for ms, _ in least.values())
    ranked = sorted(least.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return [
        {"op": op, "self_ms": ms, "share": ms / total if total else 0.0, "calls": count} for op, (ms, count) in ranked
    ]


def bench_config(
    name: str, batch: int, quantities: Sequence[str], reps: int, warmup: int, profile_slow: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Check, measure the memory of and time every method of every quantity on one (model, batch): (its rows, its
    checks, its meta entry, with the profiles when ``profile_slow``)."""
    config = Config(name, batch)
    fns: dict[str, Step] = {}
    peaks: dict[str, int] = {}
    unsupported: dict[str, dict[str, str]] = {}
    checks: list[dict[str, Any]] = []
    keys: dict[str, tuple[str | None, str]] = {PLAIN: (None, PLAIN)}
    for quantity in quantities:
        unsupported[quantity], quantity_checks = check_quantity(config, quantity)
        checks += quantity_checks
        for check in quantity_checks:
            if not check["match"]:
                print(f"  MISMATCH {name} batch {batch} {quantity} against {check['against']}: {check}", flush=True)
        for method in methods_of(quantity):
            if method not in unsupported[quantity]:
                keys[f"{quantity}/{method}"] = (quantity, method)
    for key, (quantity, method) in keys.items():
        fns[key] = config.step(quantity, method)
        peaks[key] = peak_bytes(fns[key], functools.partial(config.clear, quantity, method))
    load_before = os.getloadavg()
    times = time_interleaved(fns, reps, warmup)
    load_after = os.getloadavg()

    medians = {key: summarize_ms(t) for key, t in times.items()}
    plain = medians[PLAIN]["median"]
    rows: list[dict[str, Any]] = []

    def row(quantity: str | None, method: str) -> dict[str, Any]:
        common = {"model": name, "batch": batch, "quantity": quantity, "method": method}
        key = PLAIN if quantity is None else f"{quantity}/{method}"
        if key not in medians:
            return {**common, "status": "unsupported", "reason": unsupported[quantity][method]}  # type: ignore[index]
        stats = medians[key]
        out = {
            **common,
            "status": "ok",
            "ms": stats["median"],
            "p25_ms": stats["p25"],
            "p75_ms": stats["p75"],
            "reps": reps,
            "peak_bytes": peaks[key],
            "peak_mib": peaks[key] / 2**20,
            "ratio_to_plain": stats["median"] / plain,
        }
        backpack = medians.get(f"{quantity}/backpack")
        if method == "manualbp" and backpack is not None:
            out["ratio_to_backpack"] = stats["median"] / backpack["median"]
        if method == "curvlinops" and config.kfac_partial:
            out["note"] = "Linear and Conv2d parameters only (curvlinops's KFAC rejects BatchNorm's)"
        if method == "curvlinops" and config.kfac_expand:
            note = "convolutions: KFAC-expand factors, not BackPACK's"
            out["note"] = f"{out['note']}; {note}" if "note" in out else note
        return out

    rows.append(row(None, PLAIN))
    for quantity in quantities:
        rows += [row(quantity, method) for method in methods_of(quantity)]
    meta: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "loadavg": [[round(v, 2) for v in load_before], [round(v, 2) for v in load_after]],
    }
    if profile_slow:
        profiles = {}
        for r in rows:
            if r["method"] == "manualbp" and r.get("ratio_to_backpack", 0.0) > 1.0:
                q = r["quantity"]
                profiles[q] = {
                    "manualbp": profile_top(config.step(q, "manualbp")),
                    "backpack": profile_top(config.step(q, "backpack")),
                }
                for method, top in profiles[q].items():
                    print(f"\n  profile {name} batch {batch} {q} {method} (self CPU, one call):")
                    for op in top:
                        print(f"    {op['op']:<45} {op['self_ms']:9.2f} ms {op['share']:6.1%} x{op['calls']}")
        meta["profiles"] = profiles
    return rows, checks, meta


def source_state() -> dict[str, Any]:
    """What code was measured: manualbp's version, the repository's commit, manualbp's files that differ from it,
    and the SHA-256 of manualbp/second_order's sources (in file-name order)."""
    package = Path(manualbp.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted((package / "second_order").glob("*.py")):
        digest.update(path.read_bytes())

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", ".")
    return {
        "manualbp": manualbp.__version__,
        "commit": git("rev-parse", "HEAD"),
        "changed": changed.splitlines() if changed else [],
        "second_order_sha256": digest.hexdigest(),
    }


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return "unsupported"
    return format(row[key], fmt) if key in row else ""


def format_table(rows: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one line per (model, batch, quantity), the medians, the ratios, the peak memory (MiB) and
    the check against BackPACK."""
    by: dict[tuple[str, int, str | None], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["model"], r["batch"], r["quantity"]), {})[r["method"]] = r
    check_of = {(c["model"], c["batch"], c["quantity"]): c for c in checks if c["against"].startswith("backpack")}
    header = (
        "| model | batch | quantity | manualbp ms | BackPACK ms | curvlinops ms | plain ms | manualbp / BackPACK "
        "| manualbp / plain | peak MiB manualbp | BackPACK | curvlinops | plain | vs BackPACK: max abs (rel) |"
    )
    lines = [header, "|" + "---|" * header.count(" | ")]
    for (model, batch, quantity), got in by.items():
        if quantity is None:
            continue
        plain = by[(model, batch, None)][PLAIN]
        manual = got.get("manualbp")
        check = check_of.get((model, batch, quantity))
        check_cell = ""
        if check is not None:
            against = "" if check["against"].endswith(EXTENSIONS[quantity]) else f" vs {check['against']}"
            check_cell = (
                f"{check['max_abs']:.1e} ({check['max_rel']:.1e}){'' if check['match'] else ' MISMATCH'}{against}"
            )
        mib = {m: _cell(got.get(m), "peak_mib", ".1f") for m in METHODS}
        curvlinops = got.get("curvlinops")
        curvlinops_ms = _cell(curvlinops, "ms", ".1f")
        if quantity not in CURVLINOPS:
            curvlinops_ms = mib["curvlinops"] = "-"
        elif curvlinops is not None and "note" in curvlinops:
            curvlinops_ms += " *"
        lines.append(
            f"| {model} | {batch} | {quantity} | {_cell(manual, 'ms', '.1f')} | {_cell(got.get('backpack'), 'ms', '.1f')} "
            f"| {curvlinops_ms} | {plain['ms']:.1f} | {_cell(manual, 'ratio_to_backpack', '.2f')} "
            f"| {_cell(manual, 'ratio_to_plain', '.2f')} | {mib['manualbp']} | {mib['backpack']} | {mib['curvlinops']} "
            f"| {plain['peak_mib']:.1f} | {check_cell} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--quantities", nargs="+", default=list(QUANTITIES), choices=list(QUANTITIES))
    parser.add_argument("--reps", type=int, default=10, help="timed calls per method (default 10)")
    parser.add_argument("--warmup", type=int, default=0, help="more untimed calls per method before timing (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--profile", action="store_true", help="profile the rows where manualbp is slower")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: in a new temporary folder)")
    opts = parser.parse_args(argv)
    if opts.reps < 1 or opts.warmup < 0 or opts.threads < 1 or any(b < 1 for b in opts.batches):
        parser.error("--reps, --threads and --batches must be positive, --warmup non-negative")
    torch.set_num_threads(opts.threads)
    out = opts.out or output_folder(None, "bench_curvature") / "bench_curvature.json"
    meta: dict[str, Any] = machine_meta(
        "bench_curvature.py", argv, reps=opts.reps, warmup=opts.warmup, mc_samples=MC_SAMPLES, seed=SEED
    )
    meta["versions"] = {
        package: version(package) for package in ("backpack-for-pytorch", "curvlinops-for-pytorch", "torchvision")
    }
    meta["source"] = source_state()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32; {opts.reps} interleaved timed "
        f"calls per method after {opts.warmup} warm-up calls",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    configs = []
    with warnings.catch_warnings():
        # BackPACK's module hooks on a model whose input needs no gradient; its converter's notes: harmless here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", module="backpack")
        for name in opts.models:
            for batch in opts.batches:
                config_rows, config_checks, config_meta = bench_config(
                    name, batch, opts.quantities, opts.reps, opts.warmup, opts.profile
                )
                rows += config_rows
                checks += config_checks
                configs.append(config_meta)
                print(f"  measured {name} batch {batch}", flush=True)
    meta["configs"] = configs
    meta["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    print()
    print(format_table(rows, checks))
    print(
        "\nms: medians; peak MiB: the most bytes torch's CPU allocator had handed out during one call and not yet "
        "freed; *: curvlinops's KFAC differs (see the JSON's notes)."
    )
    for r in rows:
        if r["status"] != "ok":
            print(f"unsupported: {r['model']} {r['quantity']} {r['method']}: {r['reason']}")
    write_json(out, {"meta": meta, "rows": rows, "checks": checks})
    return out


if __name__ == "__main__":
    main()
