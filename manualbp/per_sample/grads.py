"""``per_sample_grads``: each trainable parameter's (N, *p.shape) per-sample gradients, as ``p.grad_sample``."""

from __future__ import annotations

import sys

import torch

from manualbp.per_sample._mode import PerSampleError, PerSampleMode


class _GradSampleMode(PerSampleMode):
    """The seam's mode of ``per_sample_grads``: a layer's reduction returns its plain gradients (``p.grad`` as
    usual) and writes its per-sample ones, one batched matmul for Linear and Conv2d, into ``p.grad_sample``."""

    op = "per_sample_grads"

    def _open(self) -> None:
        self._spares: dict[int, torch.Tensor] = {}
        for key, p in self.params.items():  # each block starts afresh
            if hasattr(p, "grad_sample"):
                if _held_only_by(p):
                    self._spares[key] = p.grad_sample
                del p.grad_sample
        self._begin()

    def _begin(self) -> None:
        self._sampled: set[int] = set()
        self._reached: dict[int, torch.Tensor] = {}

    def _close(self) -> None:
        self._spares = {}
        self._begin()

    def _reduce(self, terms, params):
        scale = self._scale(terms.batch)  # on G, before the (N, *p.shape) tensors exist
        spares = tuple(None if p is None else self._spares.pop(id(p), None) for p in params)
        samples = terms.per_sample(scale if scale != 1 else None, spares)
        grads = terms.total(samples, scale if scale != 1 else None)  # p.grad, as usual
        with torch.no_grad():
            for p, sample in zip(params, samples):
                if p is None or sample is None:
                    continue
                sample = sample.to(p.dtype)
                previous = getattr(p, "grad_sample", None)
                if previous is None:
                    p.grad_sample = sample
                elif previous.shape != sample.shape:
                    raise PerSampleError(
                        f"{self.op}: {self.names[id(p)]!r} has per-sample gradients of shape {tuple(previous.shape)} "
                        f"from an earlier use and gets {tuple(sample.shape)} now: the batch sizes differ"
                    )
                else:
                    p.grad_sample = previous + sample  # a parameter used twice, or a second backward: summed
                self._sampled.add(id(p))
        return grads

    def _accumulated(self, param: torch.Tensor) -> None:
        self._queue_finish()
        self._reached[id(param)] = param

    def _finish(self) -> None:
        missing = [p for key, p in self._reached.items() if key not in self._sampled]
        self._begin()
        if missing:
            raise self._unsupported(missing)


def _grad_sample_refs(p: torch.Tensor) -> tuple[int, int]:
    """(references to ``p.grad_sample``'s Python object, to its memory), as read here."""
    held = p.grad_sample
    return sys.getrefcount(held), torch._C._storage_Use_Count(held.untyped_storage()._cdata)


def _sole_refs() -> tuple[int, int]:
    """``_grad_sample_refs`` of a grad_sample that nothing but its parameter holds (counted, not assumed: the
    counts differ between Python versions)."""
    p = torch.nn.Parameter(torch.empty(0))
    p.grad_sample = torch.empty(1)
    return _grad_sample_refs(p)


_SOLE_REFS = _sole_refs()


def _held_only_by(p: torch.Tensor) -> bool:
    """Whether ``p.grad_sample`` is held by ``p`` alone: no other name, no view of its memory, not part of a
    graph. Then the next block may write its per-sample gradients into that memory, as autograd reuses a
    gradient's memory that nothing else holds: a layer's (N, *p.shape) tensor is tens of MB, and writing into
    memory already touched is 8x faster than into new memory (``outer_per_sample``)."""
    held = p.grad_sample
    if not isinstance(held, torch.Tensor) or held.requires_grad or held.grad_fn is not None:
        return False
    del held
    return _grad_sample_refs(p) == _SOLE_REFS


def per_sample_grads(model: torch.nn.Module, loss_reduction: str = "mean") -> _GradSampleMode:
    """Context manager: a backward inside it leaves on each trainable parameter p of ``model`` its per-sample
    gradients ``p.grad_sample`` (N, *p.shape), and ``p.grad`` as usual.

    Row n is the gradient of sample n's own loss term ℓ_n (Opacus's convention): with
    ``loss_reduction="mean"`` (the loss is (1/N) Σ_n ℓ_n) the rows are scaled back by N, so
    ``p.grad_sample.mean(0)`` equals ``p.grad``; with ``"sum"`` (Σ_n ℓ_n), ``p.grad_sample.sum(0)`` does. N is
    dim 0 of each layer's input (a recurrent layer's batch dim: dim 1 of a time-major sequence).

    Computed inside the hand-written backward of manualbp's Linear and LinearReLU (any leading dims), Conv2d
    (any stride, padding, dilation, groups), LayerNorm, BatchNorm in eval mode, RNN, LSTM and GRU (stacked,
    bidirectional, packed) and their cells, under any learning rule.
    A layer that mixes the samples (BatchNorm with batch statistics), a parameter whose gradient comes from
    any other layer, or an input without a batch dim raises ``PerSampleError`` naming it.

    Several backward passes in one block add up, as ``p.grad`` does; opening a block deletes the
    ``grad_sample`` of an earlier one, and reuses its memory when nothing else holds it (no name, no view):
    keep a result across blocks by holding it (``g = p.grad_sample``) or cloning it. The block may hold the forward or not. Outside it nothing is computed
    or kept. See ``manualbp.per_sample`` for the design.

        >>> with manualbp.per_sample_grads(model):
        ...     manualbp.functional.cross_entropy(model(x), y).backward()
        >>> model.fc1.weight.grad_sample.shape          # (N, out, in)
    """
    return _GradSampleMode(model, loss_reduction)
