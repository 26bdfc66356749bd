"""``CurvatureMode``: the reduction seam's mode behind ``manualbp.curvature`` (``manualbp.second_order``'s docstring states the design)."""

from __future__ import annotations

from typing import Any

import torch

from manualbp.functional._reduction import graph_node
from manualbp.per_sample._mode import PerSampleError, PerSampleMode, Record, accumulate_grad
from manualbp.second_order import loss_factors, quantities
from manualbp.second_order.diag_h_graph import check_piecewise_linear


class CurvatureError(PerSampleError):
    """What ``manualbp.curvature`` cannot compute correctly: a quantity a layer or loss does not give, a learning
    rule with a second-order quantity, a loss that is not manualbp's cross entropy or MSE, and everything the
    per-sample modes refuse (a layer mixing the samples, a parameter with a gradient from a torch op, ...)."""


class CurvatureMode(PerSampleMode):
    """The mode of ``curvature(model, *quantities)``. In the backward of the gradient it is a per-sample mode:
    each layer's terms give the first-order quantities and the plain gradient, written when the backward ends.
    When the backward reaches the loss (``loss``), it runs the backward of the loss Hessian's factor S (V, N, C)
    from the loss's input, under ``torch.func.vmap`` over the V columns, through the same hand-written backward
    functions; each layer's ``reduce`` then receives G batched over the columns and adds its second-order
    quantities (``quantities.second_order``)."""

    op = "curvature"
    error = CurvatureError

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], mc_samples: int) -> None:
        super().__init__(model, "sum")
        self.quantities = names
        self.mc_samples = mc_samples
        self._columns: tuple[str, ...] | None = None  # the quantities of the factor whose columns run back now
        self._second: dict[int, dict[str, Any]] = {}
        self._losses = 0

    # ---- the context -----------------------------------------------------------------------------------

    def _open(self) -> None:
        if any(q in quantities.SECOND_ORDER for q in self.quantities):
            for name, module in self.model.named_modules():
                if "rule" in vars(module):
                    raise CurvatureError(
                        f"curvature: {name or 'the model'} has the learning rule {module.rule}: the loss Hessian's "
                        "factor would flow back through its feedback matrix, not the weights, and the result would "
                        "be no curvature of the loss. First-order quantities compose with rules; second-order ones "
                        "need backprop (manualbp.convert(model, rule='backprop'))"
                    )
        for p in self.params.values():  # each block starts afresh
            for q in quantities.FIRST_ORDER + quantities.SECOND_ORDER:
                if hasattr(p, q):
                    delattr(p, q)

    def _close(self) -> None:
        self._second = {}
        self._columns = None
        self._losses = 0

    # ---- the seam's calls ------------------------------------------------------------------------------

    def reduce(self, ctx: Any, terms: Any) -> tuple[torch.Tensor | None, ...]:
        if self._columns is None:
            return super().reduce(ctx, terms)
        node = graph_node(ctx)
        params = tuple(self._param(node, o)[0] if need else None for o, need in zip(terms.ordinals, terms.needs))
        terms.needs = tuple(p is not None for p in params)
        if any(terms.needs):
            if not terms.batched:
                raise CurvatureError(f"curvature: {self._layer(params)} got an input without a batch dim")
            level = torch._C._functorch.maybe_get_level(self._grad_tensor(terms))
            try:
                results = quantities.second_order(terms, self._columns, lambda t: _unwrap(t, level))
            except quantities.QuantityError as error:
                raise CurvatureError(f"curvature: {self._layer(params)}: {error}") from None
            for p, result in zip(params, results):
                if p is not None:
                    self._add_second(p, result)
        return (None,) * len(terms.needs)

    def loss(self, ctx: Any, kind: str, grad_out: torch.Tensor) -> None:
        exact = tuple(q for q in self.quantities if q in quantities.EXACT)
        sampled = tuple(q for q in self.quantities if q in quantities.SAMPLED)
        if not (exact or sampled) or self._columns is not None or torch._C._are_functorch_transforms_active():
            return
        self._losses += 1
        if self._losses > 1 and any(q in quantities.KRONECKER for q in self.quantities):
            raise CurvatureError("curvature: kfac and kflr take one loss per backward; this backward has two")
        if ctx.reduction not in ("mean", "sum"):
            raise CurvatureError(f"curvature: {kind} with reduction={ctx.reduction!r}; use 'mean' or 'sum'")
        output, target, weight = ctx.saved_tensors
        if weight is not None:
            raise CurvatureError(f"curvature: {kind} with a weight: its Hessian factor is not computed")
        if output.grad_fn is None:
            return
        scale = float(grad_out)
        if scale < 0:
            raise CurvatureError(f"curvature: the loss is scaled by {scale} < 0: its Hessian is not positive")
        if any(q in ("diag_h", "diag_h_batch") for q in self.quantities):
            try:
                check_piecewise_linear(output.grad_fn)
            except ValueError as error:
                raise CurvatureError(f"curvature: diag_h: {error}") from None
        for names, samples in ((exact, None), (sampled, self.mc_samples)):
            if names:
                self._run_columns(kind, ctx, output, target, names, samples, scale)

    # ---- the backward of the factor's columns -----------------------------------------------------------

    def _run_columns(
        self,
        kind: str,
        ctx: Any,
        output: torch.Tensor,
        target: torch.Tensor,
        names: tuple[str, ...],
        mc_samples: int | None,
        scale: float,
    ) -> None:
        try:
            if kind == "cross_entropy":
                factor = loss_factors.cross_entropy_factor(output, target, ctx.ignore_index, ctx.reduction, mc_samples)
            else:
                factor = loss_factors.mse_factor(output, target, ctx.reduction, mc_samples)
        except loss_factors.LossFactorError as error:
            raise CurvatureError(f"curvature: {kind}: the loss Hessian's factor needs {error}") from None
        factor = (factor * scale**0.5).to(output.dtype)
        leaves = list(self.params.values())

        def backward_of(column: torch.Tensor) -> torch.Tensor:
            torch.autograd.grad(output, leaves, column, retain_graph=True, allow_unused=True)
            return column.new_zeros(())

        self._columns = names
        try:
            torch.func.vmap(backward_of)(factor)
        finally:
            self._columns = None

    @staticmethod
    def _grad_tensor(terms: Any) -> torch.Tensor:
        for value in vars(terms).values():
            for leaf in value if isinstance(value, (list, tuple)) else (value,):
                for t in leaf if isinstance(leaf, (list, tuple)) else (leaf,):
                    if isinstance(t, torch.Tensor) and torch._C._functorch.is_batchedtensor(t):
                        return t
        raise CurvatureError("curvature: a layer's terms hold no tensor of the factor's columns")

    def _add_second(self, p: torch.nn.Parameter, result: dict[str, Any]) -> None:
        stored = self._second.setdefault(id(p), {})
        for name, value in result.items():
            if name in stored:
                raise _shared(self.names[id(p)], name)
            stored[name] = value

    # ---- the backward of the gradient ---------------------------------------------------------------------

    def _reduce(self, record: Record) -> tuple[torch.Tensor | None, ...]:
        terms, params = record.terms, record.params
        grads = terms.reduce()
        first = tuple(q for q in self.quantities if q in quantities.FIRST_ORDER)
        results = quantities.first_order(terms, first, grads) if first else [{} for _ in params]
        record.terms, record.payload = None, (grads, results)
        return tuple(g if p is None else None for g, p in zip(grads, params))

    def _finish(self, records: list[Record]) -> None:
        second = any(q in quantities.SECOND_ORDER for q in self.quantities)
        if second and not self._second:
            self._losses = 0
            raise CurvatureError(
                "curvature: the backward reached no manualbp.functional.cross_entropy or mse_loss, whose backward "
                "starts the loss Hessian's factor: compute the loss with one of them (torch's losses are not seen)"
            )
        written: dict[int, torch.nn.Parameter] = {}
        first: dict[int, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for record in records:
                for p, grad, result in zip(record.params, *record.payload):
                    if p is None or grad is None:
                        continue
                    accumulate_grad(p, grad)
                    written[id(p)] = p
                    stored = first.setdefault(id(p), {})
                    for name, value in result.items():
                        if name in stored and name != "grad_batch":
                            raise _shared(self.names[id(p)], name)
                        stored[name] = value if name not in stored else stored[name] + value
            if second:
                unreached = [self.names[key] for key in written if key not in self._second]
                if unreached:
                    self._second, self._losses = {}, 0
                    raise CurvatureError(
                        f"curvature: {', '.join(map(repr, unreached))} got a gradient but the loss Hessian's columns, "
                        "run back from the loss with torch.autograd.grad, did not reach its layer: a reentrant "
                        "checkpoint (use_reentrant=True) hides the parameters inside it from autograd.grad. Use "
                        "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)"
                    )
            for key, p in written.items():
                for name, value in {**first.get(key, {}), **self._second.get(key, {})}.items():
                    setattr(p, name, _cast(value, p.dtype))
        self._second = {}
        self._losses = 0


def _shared(name: str, quantity: str) -> CurvatureError:
    return CurvatureError(
        f"curvature: {name!r} is used by two layers (shared weights): its {quantity} is a square of the sum of "
        "their per-sample terms, which the layers' terms do not give one by one"
    )


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return [v.to(dtype) for v in value] if isinstance(value, list) else value.to(dtype)


def _unwrap(t: torch.Tensor, level: int) -> torch.Tensor:
    """t's values with the vmapped columns (level ``level``) as dim 0."""
    if torch._C._functorch.is_batchedtensor(t) and torch._C._functorch.maybe_get_level(t) == level:
        bdim = torch._C._functorch.maybe_get_bdim(t)
        return torch._C._functorch.get_unwrapped(t).movedim(bdim, 0)
    raise CurvatureError("curvature: a layer's factor is not batched over the loss Hessian's columns")
