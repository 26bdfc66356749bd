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
import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd.gradcheck import GradcheckError
from torch.utils._pytree import tree_leaves

from manualbp.verify.case import OpCase, seeded
from manualbp.verify.report import Report, Row

Tolerance = tuple[float, float]
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
    "autocast_cpu_bfloat16",
    "autocast_chain",
)
CUDA_CHECKS = ("cuda", "autocast_float16", "autocast_bfloat16")

_VMAP_BATCH = 3


def available_checks() -> tuple[str, ...]:
    """The checks ``verify`` runs by default here: the CPU ones, plus the CUDA ones when a device is present."""
    return CPU_CHECKS + (CUDA_CHECKS if torch.cuda.is_available() else ())


class Unsupported(Exception):
    """Raised inside a check when the function cannot take it (as opposed to taking it and failing)."""


class GraphBreak(Exception):
    """Raised by the compile check when Dynamo cannot trace the Function because it defines ``jvp``:
    a limit of torch.compile, not a wrong gradient."""


_UNSUPPORTED_MARKERS = {
    "forward_ad": ("jvp",),
    "vmap": ("setup_context", "generate_vmap_rule", "vmap staticmethod", "batching rule"),
    "func_grad": ("setup_context", "generate_vmap_rule"),
}


# ---------------------------------------------------------------------------------------------------
# The subject: a callable (or module) as a pure function of its differentiable tensors


class _Subject:
    """``target`` applied to ``args``, as a function of the differentiable tensors.

    The differentiable tensors are the floating tensor arguments followed by the module's floating
    parameters. Buffers (running statistics) are cloned on every call, so calls do not leak state
    into each other and transforms may update them in place.
    """

    def __init__(self, target: Callable[..., Any], args: Sequence[Any], state_from: torch.nn.Module | None = None):
        self.args = list(args)
        self.slots = [i for i, a in enumerate(args) if _is_float_tensor(a)]
        # integer tensors (class targets, indices): not differentiable, but transforms batch them too
        self.int_slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and not a.is_floating_point()]
        self.module = target if isinstance(target, torch.nn.Module) else None
        self.target = target
        if self.module is not None and state_from is not None:
            self.module.load_state_dict(state_from.state_dict())
        params = dict(self.module.named_parameters()) if self.module is not None else {}
        self.param_names = [n for n, p in params.items() if p.is_floating_point()]
        self.tensors = tuple(args[i] for i in self.slots) + tuple(params[n].detach() for n in self.param_names)
        self.labels = [f"input {i}" for i in self.slots] + self.param_names
        self.num_inputs = len(self.slots)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {n: b.clone() for n, b in self.module.named_buffers()} if self.module is not None else {}

    def integer_tensors(self) -> list[torch.Tensor]:
        """The integer tensor arguments, in order (``ints=`` of a call replaces them)."""
        return [self.args[i] for i in self.int_slots]

    def __call__(
        self, *tensors: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None, ints: Sequence[torch.Tensor] | None = None
    ) -> Any:
        """The call under a fixed seed."""
        return seeded(self.unseeded)(*tensors, buffers=buffers, ints=ints)

    def unseeded(
        self, *tensors: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None, ints: Sequence[torch.Tensor] | None = None
    ) -> Any:
        full = list(self.args)
        for slot, tensor in zip(self.slots, tensors[: self.num_inputs]):
            full[slot] = tensor
        for slot, tensor in zip(self.int_slots, ints if ints is not None else ()):
            full[slot] = tensor
        if self.module is None:
            return self.target(*full)
        state = dict(zip(self.param_names, tensors[self.num_inputs :]))
        state.update(self.buffers() if buffers is None else buffers)
        return torch.func.functional_call(self.module, state, tuple(full))


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _float_outputs(out: Any) -> list[torch.Tensor]:
    """The floating tensors of an output, however nested (an LSTM's ``(output, (h_n, c_n))``, a PackedSequence)."""
    return [o for o in tree_leaves(out) if _is_float_tensor(o)]


def _leaves(tensors: Sequence[torch.Tensor], requires: Sequence[bool] | None = None) -> list[torch.Tensor]:
    requires = requires if requires is not None else [True] * len(tensors)
    return [t.detach().clone().requires_grad_(r) for t, r in zip(tensors, requires)]


# ---------------------------------------------------------------------------------------------------
# Comparison


@dataclass
class _Errors:
    """The running comparison of several tensor pairs: the largest errors and where the worst is."""

    rtol: float
    atol: float
    ok: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    _worst_excess: float = -math.inf

    def add(self, label: str, actual: torch.Tensor | None, expected: torch.Tensor | None) -> None:
        if actual is None and expected is None:
            return
        if actual is None or expected is None:
            reference = expected if actual is None else actual
            actual = torch.zeros_like(reference) if actual is None else actual
            expected = torch.zeros_like(reference) if expected is None else expected
        if actual.shape != expected.shape:
            self.ok = False
            self.worst = f"{label}: shape {tuple(actual.shape)} != reference {tuple(expected.shape)}"
            self._worst_excess = math.inf
            return
        a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
        if a.numel() == 0:
            return
        diff = (a - e).abs()
        both_nan = a.isnan() & e.isnan()
        same_inf = (a == e) & a.isinf()
        diff = torch.where(both_nan | same_inf, 0.0, diff.nan_to_num(nan=math.inf))
        rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        excess = diff - (self.atol + self.rtol * e.abs().nan_to_num(posinf=0.0))
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float(torch.where(diff == 0, 0.0, rel).max()))
        worst = int(excess.flatten().argmax())
        if float(excess.flatten()[worst]) > 0:
            self.ok = False
        if float(excess.flatten()[worst]) > self._worst_excess:
            self._worst_excess = float(excess.flatten()[worst])
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else ()
            self.worst = (
                f"largest error in {label} at {index}: {float(a.flatten()[worst]):.6g} "
                f"vs reference {float(e.flatten()[worst]):.6g}"
            )

    def add_all(self, labels: Sequence[str], actual: Sequence[Any], expected: Sequence[Any]) -> None:
        if len(actual) != len(expected):
            self.ok = False
            self.worst = f"{len(actual)} tensors vs {len(expected)} from the reference"
            return
        for label, a, e in zip(labels, actual, expected):
            self.add(label, a, e)

    def add_dtypes(self, labels: Sequence[str], actual: Sequence[Any], expected: Sequence[Any]) -> None:
        """Fail at the first pair whose dtypes differ (a missing tensor on either side is left to ``add``)."""
        for label, a, e in zip(labels, actual, expected):
            if a is not None and e is not None and a.dtype != e.dtype:
                self.ok = False
                self.worst = f"{label}: dtype {a.dtype} != reference {e.dtype}"
                self._worst_excess = math.inf
                return


def _grad_outputs(outputs: Sequence[torch.Tensor], kind: str = "dense") -> list[torch.Tensor]:
    """dL/dy for each output, drawn from a fixed generator: dense, non-contiguous (a layout ``.view``
    cannot reshape) or expanded (stride 0)."""
    g = torch.Generator().manual_seed(1)
    grads = []
    for out in outputs:
        if kind == "expanded":
            grads.append(torch.randn((), generator=g, dtype=torch.float64).to(out).expand(out.shape))
        elif kind == "noncontiguous":
            # dims stored in reverse order (a transposed layout: no .view can flatten it), or every
            # other element for a 1-D output
            if out.dim() >= 2:
                reversed_layout = torch.randn(out.shape[::-1], generator=g, dtype=torch.float64).to(out)
                grads.append(reversed_layout.permute(*range(out.dim() - 1, -1, -1)))
            else:
                grads.append(torch.randn(*out.shape, 2, generator=g, dtype=torch.float64).to(out)[..., 0])
        else:
            grads.append(torch.randn(out.shape, generator=g, dtype=torch.float64).to(out))
    return grads


def _vjp(
    fn: Callable[..., Any],
    tensors: Sequence[torch.Tensor],
    kind: str = "dense",
    requires: Sequence[bool] | None = None,
    forward_context: Callable[[], Any] = contextlib.nullcontext,
):
    """Outputs and the gradients of every tensor (None for those not requiring grad) under dL/dy of ``kind``.

    The forward runs inside ``forward_context()`` (autocast, say), the backward outside it, as in training.
    """
    leaves = _leaves(tensors, requires)
    with forward_context():
        outputs = _float_outputs(fn(*leaves))
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    differentiable = [(o, g) for o, g in zip(outputs, _grad_outputs(outputs, kind)) if o.requires_grad]
    grads = iter(
        torch.autograd.grad([o for o, _ in differentiable], wanted, [g for _, g in differentiable], allow_unused=True)
        if differentiable and wanted
        else [None] * len(wanted)
    )
    return [o.detach() for o in outputs], [next(grads) if leaf.requires_grad else None for leaf in leaves]


# ---------------------------------------------------------------------------------------------------
# The checks


@dataclass
class _Sample:
    function: Callable[..., Any]
    reference: Callable[..., Any]
    args: Sequence[Any]
    device: torch.device
    tolerances: dict[torch.dtype, Tolerance]
    compile_backend: str

    def subjects(self, dtype: torch.dtype, device: torch.device | None = None) -> tuple[_Subject, _Subject]:
        device = device or self.device
        args = [_cast(a, dtype, device) for a in self.args]
        function = _copy_to(self.function, dtype, device)
        reference = _copy_to(self.reference, dtype, device)
        state_from = function if isinstance(reference, torch.nn.Module) and isinstance(function, torch.nn.Module) else None
        return _Subject(function, args), _Subject(reference, args, state_from)

    def errors(self, dtype: torch.dtype) -> _Errors:
        rtol, atol = self.tolerances[dtype]
        return _Errors(rtol, atol)


def _cast(arg: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if not isinstance(arg, torch.Tensor):
        return arg
    return arg.detach().to(device=device, dtype=dtype if arg.is_floating_point() else arg.dtype)


def _copy_to(target: Callable[..., Any], dtype: torch.dtype, device: torch.device) -> Callable[..., Any]:
    if isinstance(target, torch.nn.Module):
        return copy.deepcopy(target).to(device=device, dtype=dtype)
    return target


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
    def check(s: _Sample) -> _Errors:
        f, _ = s.subjects(torch.float64)
        errors = s.errors(torch.float64)
        errors.max_abs = errors.max_rel = math.nan  # gradcheck reports a verdict, not our error measures
        run = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
        try:
            run(f, _leaves(f.tensors))
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
    _, jvp_r = torch.func.jvp(lambda *t: tuple(_float_outputs(r(*t))), r.tensors, tangents)
    _, jvp_f = _run_function("forward_ad", lambda: torch.func.jvp(lambda *t: tuple(_float_outputs(f(*t))), f.tensors, tangents))
    errors.add_all([f"tangent of output {i}" for i in range(len(jvp_r))], list(jvp_f), list(jvp_r))
    if len(f.tensors) > 1:
        for which in range(min(len(f.tensors), 4)):
            only = f"(tangent on {f.labels[which]} only)"
            expected = _dual_tangents(r, tangents, which)
            actual = _run_function("forward_ad", lambda: _dual_tangents(f, tangents, which))
            errors.add_all([f"tangent of output {i} {only}" for i in range(len(expected))], actual, expected)
    return errors


def _check_vmap(s: _Sample) -> _Errors:
    """vmap over a new leading batch dim of every tensor input, against a loop over it: the differentiable
    ones perturbed per slice, the integer ones (class targets) with their values rolled per slice, so each
    slice sees other valid values and an op that reads them (a range check) meets a batched tensor."""
    f, _ = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    g = torch.Generator().manual_seed(3)
    inputs = f.tensors[: f.num_inputs]
    params = f.tensors[f.num_inputs :]
    batched = [t.unsqueeze(0) + 0.1 * torch.randn((_VMAP_BATCH, *t.shape), generator=g, dtype=torch.float64).to(t) for t in inputs]
    buffers = f.buffers()
    batched_buffers = {n: b.unsqueeze(0).repeat(_VMAP_BATCH, *([1] * b.dim())) for n, b in buffers.items()}
    batched_ints = [torch.stack([t.flatten().roll(k).reshape(t.shape) for k in range(_VMAP_BATCH)]) for t in f.integer_tensors()]

    def call(batch: tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        xs, bufs, ints = batch
        return tuple(_float_outputs(f(*xs, *params, buffers=bufs, ints=ints)))

    def slice_of(k: int) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        return tuple(x[k] for x in batched), {n: b[k] for n, b in batched_buffers.items()}, tuple(t[k] for t in batched_ints)

    # randomness="same": the loop runs every slice under the same seed, so random layers draw alike
    whole = (tuple(batched), batched_buffers, tuple(batched_ints))
    vmapped = _run_function("vmap", lambda: torch.func.vmap(call, randomness="same")(whole))
    looped = [call(slice_of(k)) for k in range(_VMAP_BATCH)]
    stacked = [torch.stack([outs[i] for outs in looped]) for i in range(len(looped[0]))]
    errors.add_all([f"output {i} (vmap vs loop)" for i in range(len(stacked))], list(vmapped), stacked)
    return errors


def _check_func_grad(s: _Sample) -> _Errors:
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)

    def scalar(subject: _Subject) -> Callable[..., torch.Tensor]:
        def loss(*tensors: torch.Tensor) -> torch.Tensor:
            outputs = _float_outputs(subject(*tensors))
            return sum((o * g).sum() for o, g in zip(outputs, _grad_outputs(outputs)))

        return loss

    argnums = tuple(range(len(f.tensors)))
    grads_f = _run_function("func_grad", lambda: torch.func.grad(scalar(f), argnums=argnums)(*f.tensors))
    _, grads_r = _vjp(r, r.tensors)
    errors.add_all([f"grad of {label}" for label in f.labels], list(grads_f), grads_r)
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


def _check_compile(s: _Sample) -> _Errors:
    """torch.compile(fullgraph=True) of the function (through its jvp-less twin when it has one):
    outputs and gradients equal to eager mode."""
    f, _ = dataclasses.replace(s, function=_compile_entry(s.function)).subjects(torch.float32)
    errors = s.errors(torch.float32)
    torch._dynamo.reset()
    compiled = seeded(torch.compile(f.unseeded, backend=s.compile_backend, fullgraph=True))
    try:
        with _trace_log_kept_for_torch():
            out_c, grads_c = _vjp(compiled, f.tensors)
    except torch._dynamo.exc.Unsupported as error:
        if "custom jvp" in str(error):
            raise GraphBreak(_custom_jvp_hint(s.function)) from error
        errors.ok = False
        errors.worst = "graph break: " + _first_lines(str(error), 1)
        return errors
    finally:
        torch._dynamo.reset()
    out_e, grads_e = _vjp(f, f.tensors)
    errors.add_all([f"output {i} (compiled vs eager)" for i in range(len(out_e))], out_c, out_e)
    errors.add_all([f"grad of {label} (compiled vs eager)" for label in f.labels], grads_c, grads_e)
    return errors


def _function_class(function: Callable[..., Any]) -> type[torch.autograd.Function] | None:
    """The Function class when ``function`` is its ``apply``, else None."""
    owner = getattr(function, "__self__", None)
    is_apply = getattr(function, "__name__", "") == "apply"
    return owner if is_apply and isinstance(owner, type) and issubclass(owner, torch.autograd.Function) else None


def _compile_entry(function: Callable[..., Any]) -> Callable[..., Any]:
    """``Function.call`` for the ``apply`` of a Function decorated with ``manualbp.function`` (it applies the
    jvp-less twin while torch.compile traces); ``function`` itself otherwise."""
    cls = _function_class(function)
    return cls.call if cls is not None and "compile_twin" in vars(cls) else function


def _custom_jvp_hint(function: Callable[..., Any]) -> str:
    """What to do when Dynamo refuses the Function because it defines jvp."""
    cls = _function_class(function)
    name = cls.__name__ if cls is not None else "Function"
    return (
        f"Dynamo cannot trace {name}: it defines jvp (graph break 'Unsupported custom jvp'). "
        f"Decorate it with @manualbp.function and call {name}.call(...), which applies a jvp-less twin "
        "while torch.compile traces."
    )


@contextlib.contextmanager
def _trace_log_kept_for_torch() -> Iterator[None]:
    """Detach, for the block, the handlers that others attached to torch's structured-trace logger.

    ``torch.__trace`` is the machine-readable record of a compilation (read by tlparse when
    ``TORCH_TRACE`` is set): always at DEBUG, never propagated, and written whenever the logger has a
    handler. pytest's log capture attaches its handlers to every logger that does not propagate, so
    each compilation under pytest put dozens of empty ``DEBUG torch.__trace`` lines into a failing
    test's captured log. Torch's own trace handler stays attached.
    """
    trace_log = logging.getLogger("torch.__trace")
    foreign = [h for h in trace_log.handlers if type(h).__module__.split(".")[0] != "torch"]
    for handler in foreign:
        trace_log.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            trace_log.addHandler(handler)


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
        out_f, grads_f = _vjp(f, f.tensors, forward_context=context)
        out_r, grads_r = _vjp(r, r.tensors, forward_context=context)
        errors.add_all([f"output {i} ({where})" for i in range(len(out_r))], out_f, out_r)
        errors.add_all([f"grad of {label} ({where})" for label in f.labels], grads_f, grads_r)
        return errors

    return check


def _check_autocast_chain(s: _Sample) -> _Errors:
    """The op as a layer inside a network trained under CPU bfloat16 autocast: its floating inputs arrive
    in bfloat16 (the output of the layer below), its parameters stay float32. The output dtypes, the
    gradients' dtypes (each its input's: float32 for the parameters) and the values must be the reference's,
    the forward under ``torch.autocast``, the backward outside it."""
    f, r = s.subjects(torch.float32)
    errors = s.errors(torch.bfloat16)
    where = "cpu, autocast torch.bfloat16, bfloat16 inputs"

    def chained(subject: _Subject) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(torch.bfloat16) if i < subject.num_inputs else t for i, t in enumerate(subject.tensors))

    context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    out_f, grads_f = _vjp(f, chained(f), forward_context=context)
    out_r, grads_r = _vjp(r, chained(r), forward_context=context)
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
    "autocast_cpu_bfloat16": _check_on("cpu", torch.bfloat16),
    "autocast_chain": _check_autocast_chain,
    "cuda": _check_on("cuda"),
    "autocast_float16": _check_on("cuda", torch.float16),
    "autocast_bfloat16": _check_on("cuda", torch.bfloat16),
}


def _run_function(check: str, thunk: Callable[[], Any]) -> Any:
    """Run the function's side of a check; an error that says the function lacks what the check needs
    becomes ``Unsupported``."""
    try:
        return thunk()
    except (RuntimeError, NotImplementedError) as error:
        message = str(error)
        if any(marker in message for marker in _UNSUPPORTED_MARKERS.get(check, ())):
            raise Unsupported(_first_lines(message, 1)) from error
        raise


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


def _first_lines(text: str, count: int) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[:count])


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
) -> Report:
    """Check ``function`` against ``reference`` on every sample, with every check; return the report.

    function, reference: callables taking the same positional arguments, e.g. ``MyFunction.apply`` and
        the autograd implementation of the same math, or two ``nn.Module`` with the same parameter
        names (the reference then gets the function's state).
    sample_inputs: an iterable of argument tuples (tensors and plain values), or a callable
        ``(dtype, device) -> iterable`` of them. Floating tensors (and a module's parameters) are the
        differentiable inputs; each check casts them to the dtype it tests.
    checks: the names of the checks to run (default: ``available_checks()``; all names: ``CHECKS``).
    tolerances: per-dtype ``(rtol, atol)`` overriding ``DEFAULT_TOLERANCES``.
    name: the case label of the rows ("sample 0", "sample 1", ... by default, or ``name``, ``name[1]``).
    compile_backend: the torch.compile backend of the "compile" check ("aot_eager": fast, and it catches
        every graph break; "inductor" also generates code).
    """
    selected = tuple(checks) if checks is not None else available_checks()
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"verify: unknown check(s) {unknown}; known: {list(CHECKS)}")
    limits = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    device = torch.device(device)
    samples = list(sample_inputs(torch.float64, device) if callable(sample_inputs) else sample_inputs)
    if not samples:
        raise ValueError("verify: sample_inputs gave no sample")
    report = Report()
    for index, args in enumerate(samples):
        label = (name if index == 0 else f"{name}[{index}]") if name else f"sample {index}"
        sample = _Sample(function, reference, tuple(args), device, limits, compile_backend)
        for check in selected:
            report.rows.append(_run_check(label, check, sample))
    return report


def _run_check(label: str, check: str, sample: _Sample) -> Row:
    if check in CUDA_CHECKS and not torch.cuda.is_available():
        return Row(label, check, "unsupported", detail="no CUDA device")
    try:
        errors = CHECKS[check](sample)
    except Unsupported as why:
        return Row(label, check, "unsupported", detail=str(why))
    except GraphBreak as why:
        return Row(label, check, "graph_break", detail=str(why))
    except Exception as error:  # the function crashed under this check: that is a failure, reported
        detail = f"{type(error).__name__}: {_first_lines(str(error), 2)}"
        return Row(label, check, "fail", detail=detail + _missing_save_for_forward(error.__traceback__))
    if errors.ok:
        return Row(label, check, "pass", errors.max_abs, errors.max_rel)
    return Row(label, check, "fail", errors.max_abs, errors.max_rel, errors.worst)


def verify_cases(cases: Iterable[OpCase], checks: Sequence[str] | None = None, **options: Any) -> Report:
    """``verify`` each op case (its manual module against its reference module, on its sample)."""
    report = Report()
    for case in cases:
        manual, reference = case.build(torch.float64)
        report.extend(verify(manual, reference, [case.sample(requires_grad=False)], checks=checks, name=case.id, **options))
    return report
