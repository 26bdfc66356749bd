"""What both per-sample modes share: opening and closing the seam, finding the model's parameters from a
layer's graph node, asking the engine which of them this backward writes, refusing what they cannot do, and
collecting each backward's records until its end.

**Which gradients a backward writes.** A layer's backward computes the parameter gradients its graph node was
built to need (``ctx.needs_input_grad``), whatever the call: ``torch.autograd.grad(loss, x)`` and
``loss.backward(inputs=[w])`` run the same backward functions, and the engine drops what no leaf takes. The modes
write ``p.grad`` and ``p.grad_sample`` themselves, so they ask the engine, per parameter, whether this backward
accumulates into it (``torch._C._will_engine_execute_node`` on its ``AccumulateGrad`` node): a parameter it does
not write is not reported to the mode, and its per-sample terms are not computed. A parameter that is an input of
``torch.autograd.grad`` (its gradient returned to the caller, not accumulated) raises ``PerSampleError``: the
caller would get the plain gradient, neither per-sample nor clipped.

**Where gradients come from.** Inside a context the layers return no gradient for the model's parameters; the
mode writes them when the backward ends. So any gradient autograd is about to accumulate into one of the model's
parameters (its tensor hook) comes from something else (a torch op sharing the parameter, a penalty term in the
loss, a layer without per-sample gradients): ``PerSampleError``, naming it, rather than a per-sample result that
misses that part. The cost: hooks on the parameters' accumulation (DDP's reducer) do not see these gradients.

**One backward, its records.** Each report (``reduce``) is recorded under the engine's current graph task; the
first of a task queues a callback (``queue_callback``) that runs when the task has passed every node, and the
mode finishes the task's records there. A backward that the engine runs *inside* a node of another backward
(``torch.utils.checkpoint(..., use_reentrant=True)`` recomputes its segment and backpropagates through it as a
nested task) is part of that backward: at its end the engine is still inside the outer node
(``torch._C._current_autograd_node()``), so its records are handed to the enclosing backward, finished with the
rest of the model at the enclosing backward's end (a one-shot pre-hook on the outer node's successors makes sure
that end is queued).

**The batch dim.** Every layer's sample n must be the same sample: dim 0 of a layer's input, or dim 1 of a
sequence's with ``batch_first=False`` (Opacus's ``GradSampleModule(batch_first=...)``): then Linear, LinearReLU,
LayerNorm and RMSNorm take dim 1 of an input of three or more dims as the batch (Embedding: of indices of two or
more dims), the recurrent layers keep their own ``batch_first``, and Conv2d and BatchNorm always take dim 0. The
layers of one backward must agree on the batch's size, and a recurrent layer whose layout disagrees with
``batch_first`` may not feed a layer that would read its sequence the other way round (with T == N the sizes
cannot tell): both raise ``PerSampleError``.
"""

from __future__ import annotations

from typing import Any

import torch

from manualbp.functional._reduction import REDUCTION, graph_node

LOSS_REDUCTIONS = ("mean", "sum")

#: Nodes between a layer's Function and the parameter it reads that only change its dtype (autocast's casts).
_CASTS = ("ToCopyBackward0",)


class PerSampleError(RuntimeError):
    """What ``per_sample_grads`` and ``clip_per_sample`` cannot do: a layer that mixes the samples of a batch,
    a parameter whose gradient does not come from a layer they support, an input without a batch dim, layers
    that disagree on the batch, a backward whose gradients go to the caller or carry a graph."""


def check_loss_reduction(op: str, loss_reduction: str) -> None:
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"{op}: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")


def check_no_batch_statistics(op: str, model: torch.nn.Module, error: type[PerSampleError] = PerSampleError) -> None:
    """Raise PerSampleError naming the first batch-norm layer of ``model`` that would normalise with the
    statistics of the batch (training mode, or no running estimates), as Opacus's validator does (``error``: the
    exception class to raise, a subclass of PerSampleError)."""
    for name, module in model.named_modules():
        batch_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        if batch_norm and (module.training or module.running_mean is None):
            raise error(
                f"{op}: {name or 'the model'} ({type(module).__name__}) normalises with the statistics of the "
                "batch, which mixes its samples: a sample's gradient would depend on the others. Put it in eval "
                "mode (module.eval(), running statistics) or replace it, e.g. by GroupNorm or LayerNorm"
            )


def accumulate_grad(p: torch.Tensor, grad: torch.Tensor) -> None:
    """``p.grad += grad`` (``p.grad = grad`` when None), in p's dtype and, as autograd's ``AccumulateGrad`` lays
    a new gradient out, in p's strides."""
    grad = grad.to(p.dtype)
    if p.grad is not None:
        p.grad += grad
    elif grad.stride() == p.stride():
        p.grad = grad
    else:
        p.grad = torch.empty_like(p).copy_(grad)


class Record:
    """One layer's report in one backward: its ``terms`` (or None once a mode has taken what it needs), the
    model's parameters behind them (None where not of the model or not written), and what the batch checks read:
    ``batch`` (N), ``leading`` (the first two dims of a Linear's or LayerNorm's input of 3+ dims, as given) and
    ``sequence`` (a recurrent layer's (layout, T, N))."""

    __slots__ = ("batch", "leading", "params", "payload", "sequence", "terms")

    def __init__(self, terms: Any, params: tuple[torch.nn.Parameter | None, ...]) -> None:
        self.terms, self.params = terms, params
        self.payload: Any = None  # what the mode keeps of the layer until the end of the backward
        self.batch = terms.batch
        self.leading = getattr(terms, "leading", None)
        self.sequence = getattr(terms, "sequence", None)


class PerSampleMode:
    """The base of the two modes: ``reduce(ctx, terms)`` (the seam's call) finds which of ``model``'s
    parameters the layer's weight and bias are and which of them this backward writes, records them, and
    returns the gradients autograd passes on (none for the model's parameters); ``_finish(records)`` runs once
    at the end of each (outermost) backward that reported, after the batch checks."""

    op = "per_sample"
    error: type[PerSampleError] = PerSampleError  # what the mode raises (``manualbp.curvature``'s a subclass)

    def __init__(self, model: torch.nn.Module, loss_reduction: str, batch_first: bool = True) -> None:
        check_loss_reduction(self.op, loss_reduction)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{self.op}: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"{self.op}: batch_first must be True or False, got {batch_first!r}")
        self.model, self.loss_reduction, self.batch_first = model, loss_reduction, batch_first
        self.names: dict[int, str] = {}
        self.params: dict[int, torch.nn.Parameter] = {}
        self._hooks: list = []
        self._tasks: dict[int, list[Record]] = {}  # graph task id -> the records of a backward in progress
        self._orphans: list[Record] = []  # records of a nested backward, for the backward it ran inside

    # ---- the context -----------------------------------------------------------------------------------

    def __enter__(self):
        if REDUCTION.mode is not None:
            raise self.error(f"{self.op}: another per-sample or curvature context is open; they do not nest")
        check_no_batch_statistics(self.op, self.model, self.error)
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                self.names[id(p)], self.params[id(p)] = name, p
                self._hooks.append(p.register_hook(self._make_hook(p)))
        self._open()
        REDUCTION.mode = self
        return self._result()

    def __exit__(self, exc_type, *exc_info: object) -> None:
        unfinished = bool(self._orphans)
        REDUCTION.mode = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._close()
        self.names.clear()
        self.params.clear()
        self._tasks.clear()
        self._orphans = []
        if unfinished and exc_type is None:
            raise self.error(
                f"{self.op}: a backward inside the block ran nested in another one that did not reach its end; "
                "its gradients were not written"
            )

    # ---- the seam's calls ------------------------------------------------------------------------------

    def reduce(self, ctx, terms):
        """(dL/dW, dL/db) to return from the layer whose backward calls: None for the model's parameters (the
        mode writes them at the end of the backward), the plain gradient for a parameter not of the model."""
        if torch._C._are_functorch_transforms_active():  # a torch.func transform inside the block: not ours
            return terms.reduce()
        node = graph_node(ctx)
        params, needs = [], []
        for ordinal, need in zip(terms.ordinals, terms.needs):
            p, written = self._written(node, ordinal) if need else (None, False)
            params.append(p if written else None)
            needs.append(need and (p is None or written))  # a parameter not of the model: as usual
        params = tuple(params)
        terms.needs = tuple(needs)
        if all(p is None for p in params):
            return terms.reduce() if any(needs) else (None,) * len(needs)
        if not terms.batched:
            raise self.error(
                f"{self.op}: {self._layer(params)} got an input without a batch dim; per-sample gradients take "
                "the batch dim of a layer's input (dim 0; a time-major sequence's dim 1) as the samples"
            )
        if torch.is_grad_enabled():
            raise self.error(
                f"{self.op}: {self._layer(params)}: a backward with create_graph=True; the per-sample modes write "
                "gradients without a graph. Take higher derivatives outside the block"
            )
        if not self.batch_first and getattr(terms, "leading", None) is not None:
            terms = terms.time_major()
        record = Record(terms, params)
        self._records().append(record)
        return self._reduce(record)

    def refuse(self, ctx, ordinals, what: str, remedy: str | None = None) -> None:
        """Raise PerSampleError for a layer (``what``) whose backward mixes the samples of the batch; ``remedy``:
        what to do instead (by default batch norm's: eval mode, or another normalisation)."""
        if torch._C._are_functorch_transforms_active():
            return
        node = graph_node(ctx)
        params = tuple(self._param(node, o)[0] for o in ordinals)
        layer = self._layer(params) if any(p is not None for p in params) else "a layer"
        remedy = remedy or "Put it in eval mode (running statistics) or replace it, e.g. by GroupNorm or LayerNorm"
        raise self.error(
            f"{self.op}: {layer}, a {what}, mixes the samples of a batch: a sample's gradient would depend on the "
            f"others. {remedy}"
        )

    def loss(self, ctx, kind: str, grad_out: torch.Tensor) -> None:
        """A loss's backward reports (``kind``: "cross_entropy" or "mse_loss"): nothing to do for the per-sample
        modes (``manualbp.curvature`` starts its Hessian factor here)."""

    # ---- for the modes ---------------------------------------------------------------------------------

    def _open(self) -> None:
        """Reset the mode's state when its context opens."""

    def _close(self) -> None:
        """Drop the mode's state when its context closes."""

    def _result(self):
        return None

    def _reduce(self, record: Record):
        """What the layer returns for ``record``'s parameters (None for the model's); may fill ``record.payload``."""
        raise NotImplementedError

    def _finish(self, records: list[Record]) -> None:
        """Write the results of one backward's records (checked to agree on the batch)."""
        raise NotImplementedError

    def _scale(self, batch: int) -> int:
        """By what a row of G is multiplied to be a sample's own gradient: N with a mean loss, 1 with a sum."""
        return batch if self.loss_reduction == "mean" else 1

    # ---- finding the parameters --------------------------------------------------------------------------

    def _param(self, node, ordinal: int):
        """(the model's trainable parameter behind input ``ordinal`` of ``node`` (through dtype casts) or None,
        the ``AccumulateGrad`` node reached or None)."""
        edges = node.next_functions
        edge = edges[ordinal][0] if ordinal < len(edges) else None
        while edge is not None and type(edge).__name__ in _CASTS:
            edge = edge.next_functions[0][0]
        variable = getattr(edge, "variable", None)
        return (None if variable is None else self.params.get(id(variable))), edge

    def _written(self, node, ordinal: int) -> tuple[torch.nn.Parameter | None, bool]:
        """(the model's parameter behind input ``ordinal`` or None, whether this backward accumulates into it)."""
        p, accumulate = self._param(node, ordinal)
        if p is None:
            return None, False
        try:
            written = torch._C._will_engine_execute_node(accumulate)
        except RuntimeError:  # torch refuses the question for a leaf that autograd.grad returns to its caller
            raise self.error(
                f"{self.op}: torch.autograd.grad(..., inputs=...) asks for {self.names[id(p)]!r}'s gradient, which "
                "it returns to the caller instead of accumulating it: that gradient would be the plain one, neither "
                "per-sample nor clipped. Call loss.backward() (or .backward(inputs=[...])) inside the block"
            ) from None
        return p, written

    def _make_hook(self, param: torch.Tensor):
        def hook(grad: torch.Tensor | None) -> None:
            if grad is not None:  # the layers return none for the model's parameters: this is another op's
                raise self._unsupported([param])

        return hook

    def _layer(self, params) -> str:
        """The layer that owns ``params``, named as the model names it (``fc1``), for messages."""
        names = [self.names[id(p)] for p in params if p is not None]
        layer = names[0].rpartition(".")[0] if names else ""
        return f"layer {layer!r}" if layer else f"parameter {names[0]!r}" if names else "a layer"

    def _unsupported(self, params) -> PerSampleError:
        names = ", ".join(repr(self.names[id(p)]) for p in params)
        return self.error(
            f"{self.op}: {names} got a gradient from an op that does not compute per-sample gradients (a torch op or "
            "torch.nn layer using the parameter, a term of the loss, or a manualbp layer without them). They are "
            "computed by manualbp.nn's Linear, LinearReLU, Conv2d, LayerNorm, RMSNorm, BatchNorm in eval mode, Embedding, "
            "RNN, LSTM, GRU and their cells; manualbp.convert(model) swaps torch.nn layers for them"
        )

    # ---- one backward's records ----------------------------------------------------------------------------

    def _records(self) -> list[Record]:
        """The records of the backward running now; the first call of a backward queues its end."""
        task = torch._C._current_graph_task_id()
        records = self._tasks.get(task)
        if records is None:
            records = self._tasks[task] = []
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._end(task))
        return records

    def _end(self, task: int) -> None:
        """The engine's callback at the end of backward ``task``: hand a nested backward's records to the one it
        ran in, or check and finish them with those handed over."""
        records = self._tasks.pop(task, [])
        # None outside a node's backward, which torch's stub (-> _Node) does not say
        outer: torch.autograd.graph.Node | None = torch._C._current_autograd_node()
        if outer is not None:  # still inside a node of another backward: this one is part of it
            self._orphans += records
            self._queue_enclosing_end(outer)
            return
        records, self._orphans = self._orphans + records, []
        self._tasks.clear()  # what earlier backwards that raised left behind
        if records:
            self._check_batch(records)
            self._finish(records)

    def _queue_enclosing_end(self, outer) -> None:
        """Make sure the backward that ``outer`` (a node running now) belongs to has its end queued: a one-shot
        pre-hook on the nodes it passes its gradients to, which run in that backward after it."""
        handles: list[torch.utils.hooks.RemovableHandle] = []

        def adopt(grad_outputs):
            for handle in handles:
                handle.remove()
            if self._orphans and REDUCTION.mode is self:
                self._records()

        handles += [fn.register_prehook(adopt) for fn, _ in outer.next_functions if fn is not None]

    def _check_batch(self, records: list[Record]) -> None:
        """Every layer of one backward takes the same samples: the same batch size, and no sequence read with
        the batch dim of another layout."""
        for rnn in records:
            if rnn.sequence is None:
                continue
            layout, steps, batch = rnn.sequence
            if layout is None or (layout == "batch_first") == self.batch_first:
                continue
            for other in records:
                if other.leading is not None and sorted(other.leading) == sorted((steps, batch)):
                    raise self.error(
                        f"{self.op}: {self._layer(rnn.params)} is {layout.replace('_', '-')} (its batch is dim "
                        f"{0 if layout == 'batch_first' else 1}) and {self._layer(other.params)} gets an input of "
                        f"leading dims {tuple(other.leading)}, which the context reads with batch_first="
                        f"{self.batch_first}: open it with batch_first={layout == 'batch_first'}"
                    )
        sizes = {r.batch for r in records}
        if len(sizes) > 1:
            layers = ", ".join(f"{self._layer(r.params)}: {r.batch}" for r in records)
            raise self.error(
                f"{self.op}: the model's layers saw batches of different sizes ({layers}); each layer's dim 0 (dim 1 "
                "of a sequence with batch_first=False) must be the batch"
            )
