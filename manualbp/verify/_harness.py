"""The harness every check runs on: a callable as a pure function of its differentiable tensors
(``_Subject``), one sample under test (``_Sample``), the running comparison of tensors (``_Errors``) and
the vector-Jacobian product with a chosen dL/dy (``_vjp``)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from manualbp.verify.case import seeded

Tolerance = tuple[float, float]


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
        self,
        *tensors: torch.Tensor,
        buffers: dict[str, torch.Tensor] | None = None,
        ints: Sequence[torch.Tensor] | None = None,
    ) -> Any:
        """The call under a fixed seed."""
        return seeded(self.unseeded)(*tensors, buffers=buffers, ints=ints)

    def unseeded(
        self,
        *tensors: torch.Tensor,
        buffers: dict[str, torch.Tensor] | None = None,
        ints: Sequence[torch.Tensor] | None = None,
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
    """The running comparison of several tensor pairs: the largest errors and where the worst is, and a
    ``note`` on what a passing check could not compare."""

    rtol: float
    atol: float
    ok: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    note: str = ""
    _worst_excess: float = -math.inf

    def add(self, label: str, actual: torch.Tensor | None, expected: torch.Tensor | None) -> None:
        if actual is None:
            if expected is None:
                return
            actual = torch.zeros_like(expected)
        elif expected is None:
            expected = torch.zeros_like(actual)
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
    cannot reshape), expanded (stride 0) or like_output (dense, in the output's own memory format)."""
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
        elif kind == "like_output":
            grads.append(torch.empty_like(out).copy_(torch.randn(out.shape, generator=g, dtype=torch.float64)))
        else:
            grads.append(torch.randn(out.shape, generator=g, dtype=torch.float64).to(out))
    return grads


def _vjp(
    fn: Callable[..., Any],
    tensors: Sequence[torch.Tensor],
    kind: str = "dense",
    requires: Sequence[bool] | None = None,
    forward_context: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
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


@dataclass
class _Sample:
    function: Callable[..., Any]
    reference: Callable[..., Any]
    args: Sequence[Any]
    device: torch.device
    tolerances: dict[torch.dtype, Tolerance]
    compile_backend: str
    batch_dim: int | None = 0
    exhaustive: bool = False

    def subjects(self, dtype: torch.dtype, device: torch.device | None = None) -> tuple[_Subject, _Subject]:
        device = device or self.device
        args = [_cast(a, dtype, device) for a in self.args]
        function = _copy_to(self.function, dtype, device)
        reference = _copy_to(self.reference, dtype, device)
        state_from = (
            function if isinstance(reference, torch.nn.Module) and isinstance(function, torch.nn.Module) else None
        )
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


def _first_lines(text: str, count: int) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[:count])
