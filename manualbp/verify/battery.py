"""``verify``: check a callable with a hand-written backward against a reference, check by check.

The callable under test and the reference are each turned into a pure function of their
differentiable tensors (the floating tensor arguments, then a module's parameters), called under a
fixed seed so that random layers draw alike. Every check compares the two (or the function with
itself, for vmap and torch.compile) and yields one row: pass, fail with the largest error and
where it is, unsupported with the reason (the function has no ``jvp``, no vmap rule, ...), or
graph_break (torch.compile cannot trace a Function that defines ``jvp``; the row says how to fix it).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd.gradcheck import GradcheckError
from torch.utils._pytree import tree_leaves

from manualbp.verify._harness import (
    GraphBreak,
    Tolerance,
    Unsupported,
    _Errors,
    _first_lines,
    _float_outputs,
    _grad_outputs,
    _leaves,
    _run_function,
    _Sample,
    _Subject,
    _vjp,
)
from manualbp.verify.case import OpCase
from manualbp.verify.graph_capture import _check_compile, _check_compile_dynamic, _check_export_dynamic
from manualbp.verify.memory_format import _check_memory_format
from manualbp.verify.report import Report, Row

SampleInputs = Iterable[Sequence[Any]] | Callable[[torch.dtype, torch.device], Iterable[Sequence[Any]]]

DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

CPU_CHECKS = (
    "forward",
    "backward_float64",
    "backward_float32",
    "gradcheck",
    "gradgradcheck",
    "double_backward",
    "forward_ad",
    "vmap",
    "func_grad",
    "noncontiguous_grad",
    "expanded_grad",
    "partial_requires_grad",
    "compile",
    "compile_dynamic",
    "export_dynamic",
    "memory_format",
    "autocast_cpu_bfloat16",
    "autocast_chain",
)
CUDA_CHECKS = ("cuda", "autocast_float16", "autocast_bfloat16")
#: The checks that name the CPU whatever the sample's device: left out of the defaults on a CUDA device.
CPU_ONLY_CHECKS = ("autocast_cpu_bfloat16",)
#: The checks through torch's graph capture: each compiles or exports the function (seconds per sample, where the
#: others take milliseconds); the test-suite runs them in its slow tier.
GRAPH_CAPTURE_CHECKS = ("compile", "compile_dynamic", "export_dynamic")

_VMAP_BATCH = 3


def available_checks(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The checks ``verify`` runs by default on ``device``. On the CPU: the CPU ones, plus the CUDA ones when a
    CUDA device is present. On a CUDA device: every check but ``CPU_ONLY_CHECKS`` with the sample there (float64
    and float32 values and gradients, gradcheck, vmap, ... and ``autocast_chain`` under CUDA autocast), then the
    CUDA ones."""
    if torch.device(device).type == "cuda":
        return tuple(c for c in CPU_CHECKS if c not in CPU_ONLY_CHECKS) + CUDA_CHECKS
    return CPU_CHECKS + (CUDA_CHECKS if torch.cuda.is_available() else ())


#: gradcheck's ``nondet_tol`` on CUDA: a backward that sums with atomic adds (index_add_, scatter_add_) may differ
#: in its last bits from one call to the next; torch's own OpInfo tests allow its nondeterministic CUDA ops 1e-12.
_CUDA_NONDET_TOL = 1e-12


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matmuls and cuDNN convolutions in full float32 (no TF32) while inside, as on the CPU: cuDNN rounds
    float32 convolutions to TF32 by default, and the two sides of a check reach different kernels (a hand-written
    convolution backward against torch's), so their TF32 roundings differ by 1e-3, beyond float32's tolerances."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _check_forward(s: _Sample) -> _Errors:
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    outs_f = [o for o in tree_leaves(f(*f.tensors)) if isinstance(o, torch.Tensor)]
    outs_r = [o for o in tree_leaves(r(*r.tensors)) if isinstance(o, torch.Tensor)]
    errors.add_all([f"output {i}" for i in range(len(outs_r))], outs_f, outs_r)
    return errors


def _check_backward(dtype: torch.dtype, kind: str = "dense") -> Callable[[_Sample], _Errors]:
    def check(s: _Sample) -> _Errors:
        f, r = s.subjects(dtype)
        errors = s.errors(dtype)
        out_f, grads_f = _vjp(f, f.tensors, kind)
        out_r, grads_r = _vjp(r, r.tensors, kind)
        errors.add_all([f"output {i}" for i in range(len(out_r))], out_f, out_r)
        errors.add_all([f"grad of {label}" for label in f.labels], grads_f, grads_r)
        return errors

    return check


def _check_gradcheck(second_order: bool) -> Callable[[_Sample], _Errors]:
    """torch's gradcheck (gradgradcheck): the analytical Jacobian against finite differences, in float64.
    By default in torch's fast mode, which compares uᵀ J v for random u, v instead of every entry of J (one
    finite difference and one vjp instead of one per input element: on a 17-case conv2d family 43 s -> 1 s);
    ``exhaustive`` compares every entry."""

    def check(s: _Sample) -> _Errors:
        f, _ = s.subjects(torch.float64)
        errors = s.errors(torch.float64)
        errors.max_abs = errors.max_rel = math.nan  # gradcheck reports a verdict, not our error measures
        run = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
        try:
            run(
                lambda *tensors: tuple(_float_outputs(f(*tensors))),
                _leaves(f.tensors),
                fast_mode=not s.exhaustive,
                nondet_tol=_CUDA_NONDET_TOL if s.device.type == "cuda" else 0.0,
            )
        except GradcheckError as error:
            errors.ok = False
            errors.worst = _first_lines(str(error), 1).split(", numerical")[0].rstrip(",")
        return errors

    return check


def _check_double_backward(s: _Sample) -> _Errors:
    """d/dθ <dL/dθ, v> for a fixed v: the second derivatives, against the reference's."""
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    results = []
    for subject in (f, r):
        leaves = _leaves(subject.tensors)
        outputs = [o for o in _float_outputs(subject(*leaves)) if o.requires_grad]
        grads = torch.autograd.grad(outputs, leaves, _grad_outputs(outputs), create_graph=True, allow_unused=True)
        probe = sum((g * _grad_outputs([g])[0]).sum() for g in grads if g is not None and g.requires_grad)
        if isinstance(probe, torch.Tensor):
            results.append(torch.autograd.grad(probe, leaves, allow_unused=True, materialize_grads=True))
        else:  # no first derivative depends on the inputs: the second derivatives are zero
            results.append(tuple(torch.zeros_like(leaf) for leaf in leaves))
    errors.add_all([f"second derivative wrt {label}" for label in f.labels], results[0], results[1])
    return errors


def _tangents(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    return tuple(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in tensors)


def _dual_tangents(subject: _Subject, tangents: Sequence[torch.Tensor], which: int) -> list[torch.Tensor | None]:
    """Output tangents with only tensor ``which`` dual (the others carry no tangent: jvp gets None)."""
    with fwAD.dual_level():
        args = [fwAD.make_dual(t, tangents[i]) if i == which else t for i, t in enumerate(subject.tensors)]
        return [fwAD.unpack_dual(o).tangent for o in _float_outputs(subject(*args))]


def _check_forward_ad(s: _Sample) -> _Errors:
    """torch.func.jvp with a tangent on every tensor, then dual tensors with a tangent on one tensor at a
    time (at most 4), against the reference's."""
    with warnings.catch_warnings():
        # torch's forward AD loads its decompositions with torch.jit.script on first use, which warns
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        return _compare_forward_ad(s)


def _compare_forward_ad(s: _Sample) -> _Errors:
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    tangents = _tangents(f.tensors)
    jvp_r = torch.func.jvp(lambda *t: tuple(_float_outputs(r(*t))), r.tensors, tangents)[1]  # (outputs, tangents)
    _, jvp_f = _run_function(
        "forward_ad", lambda: torch.func.jvp(lambda *t: tuple(_float_outputs(f(*t))), f.tensors, tangents)
    )
    errors.add_all([f"tangent of output {i}" for i in range(len(jvp_r))], list(jvp_f), list(jvp_r))
    if len(f.tensors) > 1:
        for which in range(min(len(f.tensors), 4)):
            only = f"(tangent on {f.labels[which]} only)"
            expected = _dual_tangents(r, tangents, which)
            actual = _run_function("forward_ad", functools.partial(_dual_tangents, f, tangents, which))
            errors.add_all([f"tangent of output {i} {only}" for i in range(len(expected))], actual, expected)
    return errors


Batch = tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], tuple[torch.Tensor, ...]]


def _batched(f: _Subject) -> Batch:
    """A new leading dim of size ``_VMAP_BATCH`` on every tensor input and buffer: the floating inputs perturbed
    per slice, the integer ones (class targets) with their values rolled per slice (so each slice sees other
    valid values, and an op that reads them, a range check, meets a batched tensor), the buffers repeated."""
    g = torch.Generator().manual_seed(3)
    inputs = f.tensors[: f.num_inputs]
    batched = [
        t.unsqueeze(0) + 0.1 * torch.randn((_VMAP_BATCH, *t.shape), generator=g, dtype=torch.float64).to(t)
        for t in inputs
    ]
    buffers = {n: b.unsqueeze(0).repeat(_VMAP_BATCH, *([1] * b.dim())) for n, b in f.buffers().items()}
    ints = [
        torch.stack([t.flatten().roll(k).reshape(t.shape) for k in range(_VMAP_BATCH)]) for t in f.integer_tensors()
    ]
    return tuple(batched), buffers, tuple(ints)


def _slice(batch: Batch, k: int) -> Batch:
    xs, buffers, ints = batch
    return tuple(x[k] for x in xs), {n: b[k] for n, b in buffers.items()}, tuple(t[k] for t in ints)


def _check_vmap(s: _Sample) -> _Errors:
    """vmap over a new leading batch dim of every tensor input (``_batched``), against a loop over it."""
    f, _ = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    params = f.tensors[f.num_inputs :]

    def call(batch: Batch) -> tuple[torch.Tensor, ...]:
        xs, bufs, ints = batch
        return tuple(_float_outputs(f(*xs, *params, buffers=bufs, ints=ints)))

    # randomness="same": the loop runs every slice under the same seed, so random layers draw alike
    whole = _batched(f)
    vmapped = _run_function("vmap", lambda: torch.func.vmap(call, randomness="same")(whole))
    looped = [call(_slice(whole, k)) for k in range(_VMAP_BATCH)]
    stacked = [torch.stack([outs[i] for outs in looped]) for i in range(len(looped[0]))]
    errors.add_all([f"output {i} (vmap vs loop)" for i in range(len(stacked))], list(vmapped), stacked)
    return errors


def _check_func_grad(s: _Sample) -> _Errors:
    """torch.func.grad of <outputs, dL/dy> against the reference's gradients; then the per-sample recipe
    ``vmap(grad(...))`` over ``_batched`` inputs (parameters shared), against a loop of ``grad`` per slice."""
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    params = f.tensors[f.num_inputs :]

    def loss(
        xs: tuple[torch.Tensor, ...],
        ps: tuple[torch.Tensor, ...],
        bufs: dict[str, torch.Tensor] | None = None,
        ints: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor | int:  # 0 without a floating output: torch.func.grad refuses it (unsupported)
        outputs = _float_outputs(f(*xs, *ps, buffers=bufs, ints=ints))
        return sum((o * g).sum() for o, g in zip(outputs, _grad_outputs(outputs)))

    grad = torch.func.grad(loss, argnums=(0, 1))
    grads_f = _run_function("func_grad", lambda: grad(f.tensors[: f.num_inputs], params))
    _, grads_r = _vjp(r, r.tensors)
    errors.add_all([f"grad of {label}" for label in f.labels], [*grads_f[0], *grads_f[1]], grads_r)

    whole = _batched(f)

    def per_sample(batch: Batch) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        xs, bufs, ints = batch
        return grad(xs, params, bufs, ints)

    vmapped = _run_function("func_grad", lambda: torch.func.vmap(per_sample, randomness="same")(whole))
    looped = [per_sample(_slice(whole, k)) for k in range(_VMAP_BATCH)]
    for j, label in enumerate(f.labels):
        group, index = (0, j) if j < f.num_inputs else (1, j - f.num_inputs)
        stacked = torch.stack([grads[group][index] for grads in looped])
        errors.add(f"grad of {label} (vmap(grad) vs loop of grad)", vmapped[group][index], stacked)
    return errors


def _check_partial_requires_grad(s: _Sample) -> _Errors:
    """Each differentiable tensor alone requiring grad (at most 4), and inputs-only / parameters-only."""
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    n = len(f.tensors)
    subsets = [[i == j for j in range(n)] for i in range(min(n, 4))]
    if 0 < f.num_inputs < n:
        subsets.append([j < f.num_inputs for j in range(n)])
        subsets.append([j >= f.num_inputs for j in range(n)])
    for requires in subsets:
        _, grads_f = _vjp(f, f.tensors, requires=requires)
        _, grads_r = _vjp(r, r.tensors, requires=requires)
        which = ", ".join(label for label, req in zip(f.labels, requires) if req)
        errors.add_all([f"grad of {label} (only {which} requiring grad)" for label in f.labels], grads_f, grads_r)
    return errors


def _check_on(device_type: str, autocast_dtype: torch.dtype | None = None) -> Callable[[_Sample], _Errors]:
    """float32 on ``device_type`` against the reference there; with ``autocast_dtype``, the forward runs
    under ``torch.autocast`` and the backward outside it (the usual mixed-precision step)."""

    def check(s: _Sample) -> _Errors:
        f, r = s.subjects(torch.float32, torch.device(device_type))
        errors = s.errors(autocast_dtype or torch.float32)
        where = f"{device_type}, autocast {autocast_dtype}" if autocast_dtype else device_type
        context = (
            (lambda: torch.autocast(device_type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
        )
        out_r, grads_r = _reference_vjp(r, r.tensors, where, forward_context=context)
        out_f, grads_f = _vjp(f, f.tensors, forward_context=context)
        errors.add_all([f"output {i} ({where})" for i in range(len(out_r))], out_f, out_r)
        errors.add_all([f"grad of {label} ({where})" for label in f.labels], grads_f, grads_r)
        return errors

    return check


def _reference_vjp(
    r: _Subject, tensors: Sequence[torch.Tensor], where: str, **options: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``_vjp`` of the reference; ``Unsupported`` when torch itself cannot run it here (its oneDNN LSTM has no
    bfloat16 kernel on a CPU without AVX-512): nothing to compare with on this machine."""
    try:
        return _vjp(r, tensors, **options)
    except RuntimeError as error:
        raise Unsupported(f"the reference raises on this machine ({where}): {_first_lines(str(error), 1)}") from error


def _check_autocast_chain(s: _Sample) -> _Errors:
    """The op as a layer inside a network trained under bfloat16 autocast (on the sample's device: the CPU, or
    CUDA): its floating inputs arrive in bfloat16 (the output of the layer below), its parameters stay float32.
    The output dtypes, the gradients' dtypes (each its input's: float32 for the parameters) and the values must
    be the reference's, the forward under ``torch.autocast``, the backward outside it."""
    f, r = s.subjects(torch.float32)
    errors = s.errors(torch.bfloat16)
    device_type = s.device.type
    where = f"{device_type}, autocast torch.bfloat16, bfloat16 inputs"

    def chained(subject: _Subject) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(torch.bfloat16) if i < subject.num_inputs else t for i, t in enumerate(subject.tensors))

    context = lambda: torch.autocast(device_type, dtype=torch.bfloat16)  # noqa: E731
    out_r, grads_r = _reference_vjp(r, chained(r), where, forward_context=context)
    out_f, grads_f = _vjp(f, chained(f), forward_context=context)
    output_labels = [f"output {i} ({where})" for i in range(len(out_r))]
    grad_labels = [f"grad of {label} ({where})" for label in f.labels]
    errors.add_all(output_labels, out_f, out_r)
    errors.add_all(grad_labels, grads_f, grads_r)
    errors.add_dtypes(output_labels + grad_labels, [*out_f, *grads_f], [*out_r, *grads_r])
    return errors


CHECKS: dict[str, Callable[[_Sample], _Errors]] = {
    "forward": _check_forward,
    "backward_float64": _check_backward(torch.float64),
    "backward_float32": _check_backward(torch.float32),
    "gradcheck": _check_gradcheck(second_order=False),
    "gradgradcheck": _check_gradcheck(second_order=True),
    "double_backward": _check_double_backward,
    "forward_ad": _check_forward_ad,
    "vmap": _check_vmap,
    "func_grad": _check_func_grad,
    "noncontiguous_grad": _check_backward(torch.float64, "noncontiguous"),
    "expanded_grad": _check_backward(torch.float64, "expanded"),
    "partial_requires_grad": _check_partial_requires_grad,
    "compile": _check_compile,
    "compile_dynamic": _check_compile_dynamic,
    "export_dynamic": _check_export_dynamic,
    "memory_format": _check_memory_format,
    "autocast_cpu_bfloat16": _check_on("cpu", torch.bfloat16),
    "autocast_chain": _check_autocast_chain,
    "cuda": _check_on("cuda"),
    "autocast_float16": _check_on("cuda", torch.float16),
    "autocast_bfloat16": _check_on("cuda", torch.bfloat16),
}


def _missing_save_for_forward(traceback: TracebackType | None) -> str:
    """A hint when the error was raised in a ``jvp`` that found ``ctx.saved_tensors`` empty: in forward
    mode it holds only what ``setup_context`` passed to ``ctx.save_for_forward``; "" otherwise."""
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None or traceback.tb_frame.f_code.co_name != "jvp":
        return ""
    code, ctx = traceback.tb_frame.f_code, traceback.tb_frame.f_locals.get("ctx")
    if ctx is None or getattr(ctx, "saved_tensors", None) != ():
        return ""
    return (
        f" ({getattr(code, 'co_qualname', code.co_name)}: ctx.saved_tensors is empty. In forward-mode AD it holds "
        "only the tensors setup_context passes to ctx.save_for_forward: add ctx.save_for_forward(...) of the "
        "tensors jvp reads, next to ctx.save_for_backward.)"
    )


# ---------------------------------------------------------------------------------------------------
# The entry point


def verify(
    function: Callable[..., Any],
    reference: Callable[..., Any],
    sample_inputs: SampleInputs,
    *,
    checks: Sequence[str] | None = None,
    tolerances: dict[torch.dtype, Tolerance] | None = None,
    device: torch.device | str = "cpu",
    name: str | None = None,
    compile_backend: str = "aot_eager",
    batch_dim: int | None = 0,
    exhaustive: bool = False,
    unsupported: Mapping[str, str] | None = None,
) -> Report:
    """Check ``function`` against ``reference`` on every sample, with every check; return the report.

    function, reference: callables taking the same positional arguments, e.g. ``MyFunction.apply`` and
        the autograd implementation of the same math, or two ``nn.Module`` with the same parameter
        names (the reference then gets the function's state).
    sample_inputs: an iterable of argument tuples (tensors and plain values), or a callable
        ``(dtype, device) -> iterable`` of them. Floating tensors (and a module's parameters) are the
        differentiable inputs; each check casts them to the dtype it tests.
    checks: the names of the checks to run (default: ``available_checks(device)``; all names: ``CHECKS``).
    tolerances: per-dtype ``(rtol, atol)`` overriding ``DEFAULT_TOLERANCES``.
    device: where the sample runs: every check but the CUDA ones and ``autocast_cpu_bfloat16`` (which name their
        device) runs there. A callable ``sample_inputs`` is asked for its inputs there; other samples are moved
        there. On CUDA, float32 runs without TF32 (``ieee_float32``) and gradcheck allows ``nondet_tol`` 1e-12.
    name: the case label of the rows ("sample 0", "sample 1", ... by default, or ``name``, ``name[1]``).
    compile_backend: the torch.compile backend of the "compile" check ("aot_eager": fast, and it catches
        every graph break; "inductor" also generates code).
    batch_dim: the batch dim of the first tensor argument (1 for a sequence in (T, N, ...)), which the
        ``compile_dynamic`` and ``export_dynamic`` checks vary, with the same dim of the others (counted from
        the end); the last dim is tried when the reference refuses other sizes in it. None: the sample has no
        batch dim (an unbatched sequence), and those checks run at its own size.
    unsupported: checks that cannot apply to ``function``, by name, with the reason (gradcheck for a gradient
        that is by definition not the derivative of the forward, as an embedding's padding row): their rows are
        "unsupported" with that reason, and they are not run.
    exhaustive: ``gradcheck`` and ``gradgradcheck`` compare every entry of the Jacobian with its finite
        difference (one backward per output element, one forward pair per input element) instead of torch's
        fast mode (random projections uᵀ J v; the default).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"verify: device {device} asked for, but torch.cuda.is_available() is False")
    selected = tuple(checks) if checks is not None else available_checks(device)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"verify: unknown check(s) {unknown}; known: {list(CHECKS)}")
    limits = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    samples = list(sample_inputs(torch.float64, device) if callable(sample_inputs) else sample_inputs)
    if not samples:
        raise ValueError("verify: sample_inputs gave no sample")
    report = Report()
    for index, args in enumerate(samples):
        label = (name if index == 0 else f"{name}[{index}]") if name else f"sample {index}"
        sample = _Sample(function, reference, tuple(args), device, limits, compile_backend, batch_dim, exhaustive)
        for check in selected:
            if unsupported and check in unsupported:
                report.rows.append(Row(label, check, "unsupported", detail=unsupported[check]))
            else:
                report.rows.append(_run_check(label, check, sample))
    return report


def _run_check(label: str, check: str, sample: _Sample) -> Row:
    if check in CUDA_CHECKS and not torch.cuda.is_available():
        return Row(label, check, "unsupported", detail="no CUDA device")
    on_cuda = check in CUDA_CHECKS or (sample.device.type == "cuda" and check not in CPU_ONLY_CHECKS)
    try:
        with ieee_float32() if on_cuda else contextlib.nullcontext():
            errors = CHECKS[check](sample)
    except Unsupported as why:
        return Row(label, check, "unsupported", detail=str(why))
    except GraphBreak as why:
        return Row(label, check, "graph_break", detail=str(why))
    except Exception as error:  # the function crashed under this check: that is a failure, reported
        detail = f"{type(error).__name__}: {_first_lines(str(error), 2)}"
        return Row(label, check, "fail", detail=detail + _missing_save_for_forward(error.__traceback__))
    if errors.ok:
        return Row(label, check, "pass", errors.max_abs, errors.max_rel, errors.note)
    return Row(label, check, "fail", errors.max_abs, errors.max_rel, errors.worst)


def verify_cases(cases: Iterable[OpCase], checks: Sequence[str] | None = None, **options: Any) -> Report:
    """``verify`` each op case (its manual module against its reference module, on its sample)."""
    report = Report()
    for case in cases:
        manual, reference = case.build(torch.float64)
        sample = [case.sample(requires_grad=False)]
        report.extend(
            verify(
                manual,
                reference,
                sample,
                checks=checks,
                name=case.id,
                batch_dim=case.batch_dim,
                unsupported=dict(case.unsupported),
                **options,
            )
        )
    return report
