"""``clip_per_sample``: the batch's gradient with each sample's gradient clipped, in one backward pass."""

from __future__ import annotations

import math
from collections import Counter

import torch

from manualbp.per_sample._mode import PerSampleError, PerSampleMode, Record, accumulate_grad

#: Added to a norm before dividing by it, as Opacus's DPOptimizer does: c_n = min(1, C / (||g_n|| + 1e-6)).
EPSILON = 1e-6


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32: squared norms summed in half precision would overflow or round away."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class PerSampleClip(PerSampleMode):
    """What ``clip_per_sample`` returns and its ``with`` block binds: ``norms``, the (N,) per-sample gradient
    norms ||g_n|| (over the model's trainable parameters that the backward writes, before clipping) of the latest
    backward in the block (None before one); ``max_grad_norm``, ``loss_reduction`` and ``batch_first`` as given.

    As the seam's mode: a layer's reduction keeps its terms and returns no gradient for the model's parameters;
    at the end of the backward (``_finish``) the norms and clip factors are computed from the kept terms and each
    layer's gradient is formed from its error signal weighted by them (see ``manualbp.per_sample``)."""

    op = "clip_per_sample"

    def __init__(
        self, model: torch.nn.Module, max_grad_norm: float, loss_reduction: str = "mean", batch_first: bool = True
    ) -> None:
        super().__init__(model, loss_reduction, batch_first)
        if (
            isinstance(max_grad_norm, bool)
            or not isinstance(max_grad_norm, (int, float))
            or not (math.isfinite(max_grad_norm) and max_grad_norm > 0)
        ):
            raise ValueError(f"{self.op}: max_grad_norm must be a positive finite number, got {max_grad_norm!r}")
        self.max_grad_norm = float(max_grad_norm)
        self.norms: torch.Tensor | None = None

    def _result(self) -> PerSampleClip:
        return self

    def _reduce(self, record: Record) -> tuple[torch.Tensor | None, ...]:
        terms, params = record.terms, record.params
        if all(p is not None for p, need in zip(params, terms.needs) if need):
            return (None,) * len(params)  # formed at the end of the backward, clipped
        plain = terms.reduce()  # a parameter not of the model (shared with another): as usual
        return tuple(g if p is None else None for g, p in zip(plain, params))

    def _finish(self, records: list[Record]) -> None:
        norms = self._norms(records).sqrt() * self._scale(records[0].batch)
        if not torch.isfinite(norms).all():
            samples = torch.nonzero(~torch.isfinite(norms)).flatten().tolist()
            raise PerSampleError(
                f"{self.op}: the gradients of samples {samples} of the batch are not finite (norm nan or inf): "
                "their clipped contributions are undefined, so nothing was written"
            )
        factors = (self.max_grad_norm / (norms + EPSILON)).clamp(max=1.0)
        with torch.no_grad():
            for record in records:
                for p, grad in zip(record.params, record.terms.weighted(factors)):
                    if p is not None and grad is not None:
                        accumulate_grad(p, grad)
        self.norms = norms

    def _norms(self, records: list[Record]) -> torch.Tensor:
        """Σ over the model's parameters of ||dL/dp_n||² (of G's scale), (N,): from each layer's factors,
        or, for a parameter several layers use, from the sum of its materialised per-sample gradients."""
        uses = Counter(id(p) for record in records for p in record.params if p is not None)
        total: torch.Tensor | int = 0
        shared: dict[int, torch.Tensor] = {}
        for record in records:
            terms, params = record.terms, record.params
            whole = all(p is not None and uses[id(p)] == 1 for p, need in zip(params, terms.needs) if need)
            if whole:
                total = total + _wide(terms.sq_norms())
                continue
            for p, sample in zip(params, terms.per_sample()):
                if p is None or sample is None:
                    continue
                if uses[id(p)] > 1:
                    shared[id(p)] = sample if id(p) not in shared else shared[id(p)] + sample
                else:
                    total = total + _wide(sample).square().flatten(1).sum(1)
        for sample in shared.values():
            total = total + _wide(sample).square().flatten(1).sum(1)
        assert isinstance(total, torch.Tensor), "every record has a parameter of the model to write"
        return total


def clip_per_sample(
    model: torch.nn.Module, max_grad_norm: float, loss_reduction: str = "mean", batch_first: bool = True
) -> PerSampleClip:
    """Context manager: a backward inside it leaves in each trainable parameter's ``p.grad`` of ``model`` the
    mean (``loss_reduction="mean"``) or sum (``"sum"``) over the batch of the per-sample gradients g_n, each
    clipped to total norm ``max_grad_norm`` = C over all parameters: Σ_n c_n g_n (divided by N for "mean"),
    c_n = min(1, C / (||g_n|| + 1e-6)) as Opacus clips. ``clip.norms``: the (N,) norms ||g_n|| before clipping.

    g_n is sample n's own gradient as ``per_sample_grads`` defines it (the rows of a "mean" loss scaled by N).
    One backward pass; the (N, *p.shape) tensors are not built where a layer's factors give the norms more
    cheaply (see ``manualbp.per_sample``). The same layers, ``batch_first`` and errors as ``per_sample_grads``;
    a gradient already in ``p.grad`` is added to, as autograd does, and each backward in the block is clipped on
    its own (gradient accumulation: every sample contributes at most C per backward).

    Only the parameters the backward writes count: with ``loss.backward(inputs=[w])`` the norms and the clipping
    are those of w's per-sample gradients alone, and the other parameters keep their ``p.grad``. The gradients are
    written when the backward ends, not through autograd's accumulation.

        >>> with manualbp.clip_per_sample(model, max_grad_norm=1.0, loss_reduction="sum") as clip:
        ...     manualbp.functional.cross_entropy(model(x), y, reduction="sum").backward()
        >>> clip.norms.shape                             # (N,)
    """
    return PerSampleClip(model, max_grad_norm, loss_reduction, batch_first)
