"""``per_sample_grads``: each trainable parameter's (N, *p.shape) per-sample gradients, as ``p.grad_sample``."""

from __future__ import annotations

import sys

import torch

from manualbp.per_sample._mode import PerSampleError, PerSampleMode, Record, accumulate_grad


class _GradSampleMode(PerSampleMode):
    """The seam's mode of ``per_sample_grads``: a layer's reduction forms its per-sample gradients (one batched
    matmul for Linear, one grouped convolution for Conv2d) and their total, and returns none for the model's
    parameters; at the end of the backward they are written into ``p.grad_sample`` and ``p.grad``."""

    op = "per_sample_grads"

    def _open(self) -> None:
        self._spares: dict[int, torch.Tensor] = {}
        for key, p in self.params.items():  # each block starts afresh
            if hasattr(p, "grad_sample"):
                if _held_only_by(p):
                    self._spares[key] = p.grad_sample
                del p.grad_sample

    def _close(self) -> None:
        self._spares = {}

    def _reduce(self, record: Record) -> tuple[torch.Tensor | None, ...]:
        terms, params = record.terms, record.params
        scale = self._scale(terms.batch)  # on G, before the (N, *p.shape) tensors exist
        scale = scale if scale != 1 else None
        spares = tuple(None if p is None else self._spares.pop(id(p), None) for p in params)
        samples = terms.per_sample(scale, spares)
        grads = terms.total(samples, scale)
        record.terms, record.payload = None, (samples, grads)  # G and x are not needed any more
        return tuple(g if p is None else None for g, p in zip(grads, params))

    def _finish(self, records: list[Record]) -> None:
        results: dict[int, list] = {}  # a parameter several layers use: its per-sample gradients summed
        for record in records:
            for p, sample, grad in zip(record.params, *record.payload):
                if p is None or sample is None:
                    continue
                if id(p) in results:
                    results[id(p)][1] += sample
                    results[id(p)][2] += grad
                else:
                    results[id(p)] = [p, sample, grad]
        for p, sample, _ in results.values():
            previous = getattr(p, "grad_sample", None)
            if previous is not None and previous.shape != sample.shape:
                raise PerSampleError(
                    f"{self.op}: {self.names[id(p)]!r} has per-sample gradients of shape {tuple(previous.shape)} "
                    f"from an earlier backward in the block and gets {tuple(sample.shape)} now: the batch sizes differ"
                )
        with torch.no_grad():
            for p, sample, grad in results.values():
                previous = getattr(p, "grad_sample", None)
                sample = sample.to(p.dtype)
                p.grad_sample = sample if previous is None else previous + sample  # a second backward: summed
                accumulate_grad(p, grad)


def _grad_sample_refs(p: torch.Tensor) -> tuple[int, int, int]:
    """(references to ``p.grad_sample``'s Python object, to its memory, to its memory's Python object), as read
    here. The last counts a holder of ``p.grad_sample.untyped_storage()``: torch keeps one Python object per
    storage and that object adds no reference to the memory itself."""
    held = p.grad_sample  # type: ignore[attr-defined]  # set at runtime (Opacus's name); torch.Tensor declares none
    storage = held.untyped_storage()
    return sys.getrefcount(held), torch._C._storage_Use_Count(storage._cdata), sys.getrefcount(storage)


def _sole_refs() -> tuple[int, int, int]:
    """``_grad_sample_refs`` of a grad_sample that nothing but its parameter holds (counted, not assumed: the
    counts differ between Python versions)."""
    p = torch.nn.Parameter(torch.empty(0))
    p.grad_sample = torch.empty(1)  # type: ignore[attr-defined]  # as above
    return _grad_sample_refs(p)


_SOLE_REFS = _sole_refs()


def _held_only_by(p: torch.Tensor) -> bool:
    """Whether ``p.grad_sample`` is held by ``p`` alone: no other name, no view of its memory, nothing holding
    its storage, not part of a graph. Then the next block may write its per-sample gradients into that memory, as autograd reuses a
    gradient's memory that nothing else holds: a layer's (N, *p.shape) tensor is tens of MB, and writing into
    memory already touched is 8x faster than into new memory (``outer_per_sample``)."""
    held = p.grad_sample  # type: ignore[attr-defined]  # as above
    if not isinstance(held, torch.Tensor) or held.requires_grad or held.grad_fn is not None:
        return False
    del held
    return _grad_sample_refs(p) == _SOLE_REFS


def per_sample_grads(model: torch.nn.Module, loss_reduction: str = "mean", batch_first: bool = True) -> _GradSampleMode:
    """Context manager: a backward inside it leaves on each trainable parameter p of ``model`` its per-sample
    gradients ``p.grad_sample`` (N, *p.shape), and ``p.grad`` as usual.

    Row n is the gradient of sample n's own loss term ℓ_n (Opacus's convention): with
    ``loss_reduction="mean"`` (the loss is (1/N) Σ_n ℓ_n) the rows are scaled back by N, so
    ``p.grad_sample.mean(0)`` equals ``p.grad``; with ``"sum"`` (Σ_n ℓ_n), ``p.grad_sample.sum(0)`` does. N is
    dim 0 of each layer's input; with ``batch_first=False`` (sequences given time-major, (T, N, ...), as Opacus's
    ``GradSampleModule(batch_first=False)``) dim 1 of an input of three or more dims of Linear, LinearReLU,
    LayerNorm and RMSNorm (of indices of two or more dims of Embedding). A recurrent layer's batch dim is its own (dim 1 unless it is ``batch_first``); Conv2d's and
    BatchNorm's is dim 0. Layers that disagree on the batch raise ``PerSampleError``.

    Computed inside the hand-written backward of manualbp's Linear and LinearReLU (any leading dims), Conv2d
    (any stride, padding, dilation, groups), LayerNorm, RMSNorm, BatchNorm in eval mode, Embedding (dim 0 of the
    indices the batch), RNN, LSTM and GRU (stacked, bidirectional, packed) and their cells, under any learning rule.
    A layer that mixes the samples (BatchNorm with batch statistics, Embedding with ``scale_grad_by_freq``), a
    parameter whose gradient comes from any other op too (a torch op sharing it, a term of the loss), an input
    without a batch dim, and ``torch.autograd.grad`` asking for a parameter's gradient raise ``PerSampleError``
    naming it.

    Only the parameters the backward writes get results: ``torch.autograd.grad(loss, x)`` leaves the model's
    parameters alone, ``loss.backward(inputs=[w])`` gives w alone its ``grad_sample``. Both are written when the
    backward ends, not through autograd's accumulation. ``torch.utils.checkpoint`` works, reentrant or not.

    Several backward passes in one block add up, as ``p.grad`` does; opening a block deletes the
    ``grad_sample`` of an earlier one, and reuses its memory when nothing else holds it (no name, no view, no
    holder of its storage): keep a result across blocks by holding it (``g = p.grad_sample``) or cloning it. The
    block may hold the forward or not. Outside it nothing is computed or kept. See ``manualbp.per_sample`` for the
    design.

        >>> with manualbp.per_sample_grads(model):
        ...     manualbp.functional.cross_entropy(model(x), y).backward()
        >>> model.fc1.weight.grad_sample.shape          # (N, out, in)
    """
    return _GradSampleMode(model, loss_reduction, batch_first)
