"""What both per-sample modes share: opening and closing the seam, finding the model's parameters from a
layer's graph node, refusing what they cannot do, and the callback at the end of a backward."""

from __future__ import annotations

import torch

from manualbp.functional._reduction import REDUCTION, graph_node

LOSS_REDUCTIONS = ("mean", "sum")

#: Nodes between a layer's Function and the parameter it reads that only change its dtype (autocast's casts).
_CASTS = ("ToCopyBackward0",)


class PerSampleError(RuntimeError):
    """What ``per_sample_grads`` and ``clip_per_sample`` cannot do: a layer that mixes the samples of a batch,
    a parameter whose gradient does not come from a layer they support, an input without a batch dim."""


def check_loss_reduction(op: str, loss_reduction: str) -> None:
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"{op}: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")


def check_no_batch_statistics(op: str, model: torch.nn.Module) -> None:
    """Raise PerSampleError naming the first batch-norm layer of ``model`` that would normalise with the
    statistics of the batch (training mode, or no running estimates), as Opacus's validator does."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                raise PerSampleError(
                    f"{op}: {name or 'the model'} ({type(module).__name__}) normalises with the statistics of the "
                    "batch, which mixes its samples: a sample's gradient would depend on the others. Put it in eval "
                    "mode (module.eval(), running statistics) or replace it, e.g. by GroupNorm or LayerNorm"
                )


class PerSampleMode:
    """The base of the two modes: ``reduce(ctx, terms)`` (the seam's call) finds which of ``model``'s
    parameters the layer's weight and bias are and hands them to ``_reduce``; ``_finish`` runs once at the
    end of each backward that reached one of them."""

    op = "per_sample"

    def __init__(self, model: torch.nn.Module, loss_reduction: str) -> None:
        check_loss_reduction(self.op, loss_reduction)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{self.op}: model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.loss_reduction = model, loss_reduction
        self.names: dict[int, str] = {}
        self.params: dict[int, torch.nn.Parameter] = {}
        self._hooks: list = []
        self._task = None  # the backward (graph task) whose end is already queued

    # ---- the context -----------------------------------------------------------------------------------

    def __enter__(self):
        if REDUCTION.mode is not None:
            raise PerSampleError(f"{self.op}: another per-sample context is open; they do not nest")
        check_no_batch_statistics(self.op, self.model)
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                self.names[id(p)], self.params[id(p)] = name, p
                self._hooks.append(p.register_hook(self._make_hook(p)))
        self._open()
        REDUCTION.mode = self
        return self._result()

    def __exit__(self, *exc_info: object) -> None:
        REDUCTION.mode = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._close()
        self.names.clear()
        self.params.clear()
        self._task = None

    # ---- the seam's calls ------------------------------------------------------------------------------

    def reduce(self, ctx, terms):
        """(dL/dW, dL/db) for the layer whose backward calls: the plain ones for a layer not of the model."""
        if torch._C._are_functorch_transforms_active():  # a torch.func transform inside the block: not ours
            return terms.reduce()
        node = graph_node(ctx)
        params = tuple(self._param(node, o) if need else None for o, need in zip(terms.ordinals, terms.needs))
        if all(p is None for p in params):
            return terms.reduce()
        if not terms.batched:
            raise PerSampleError(
                f"{self.op}: {self._layer(params)} got an input without a batch dim; per-sample gradients take "
                "the batch dim of a layer's input (dim 0; a time-major sequence's dim 1) as the samples"
            )
        self._queue_finish()
        return self._reduce(terms, params)

    def refuse(self, ctx, ordinals, what: str) -> None:
        """Raise PerSampleError for a layer (``what``) whose backward mixes the samples of the batch."""
        if torch._C._are_functorch_transforms_active():
            return
        node = graph_node(ctx)
        params = tuple(self._param(node, o) for o in ordinals)
        layer = self._layer(params) if any(p is not None for p in params) else "a layer"
        raise PerSampleError(
            f"{self.op}: {layer}, a {what}, mixes the samples of a batch: a sample's gradient would depend on the "
            "others. Put it in eval mode (running statistics) or replace it, e.g. by GroupNorm or LayerNorm"
        )

    # ---- for the modes ---------------------------------------------------------------------------------

    def _open(self) -> None:
        """Reset the mode's state when its context opens."""

    def _close(self) -> None:
        """Drop the mode's state when its context closes."""

    def _result(self):
        return None

    def _reduce(self, terms, params):
        raise NotImplementedError

    def _begin(self) -> None:
        """When a backward first reaches the model's parameters through the seam or a hook."""

    def _finish(self) -> None:
        """At the end of a backward that reached the model's parameters through the seam."""

    def _make_hook(self, param: torch.Tensor):
        def hook(grad: torch.Tensor | None) -> None:
            if grad is not None:  # None: the layers returned none (clip_per_sample's)
                self._accumulated(param)

        return hook

    def _accumulated(self, param: torch.Tensor) -> None:
        """Autograd is about to accumulate a gradient into one of the model's parameters (its tensor hook)."""

    def _scale(self, batch: int) -> int:
        """By what a row of G is multiplied to be a sample's own gradient: N with a mean loss, 1 with a sum."""
        return batch if self.loss_reduction == "mean" else 1

    def _param(self, node, ordinal: int) -> torch.nn.Parameter | None:
        """The model's trainable parameter behind input ``ordinal`` of ``node`` (through dtype casts), or None."""
        edges = node.next_functions
        edge = edges[ordinal][0] if ordinal < len(edges) else None
        while edge is not None and type(edge).__name__ in _CASTS:
            edge = edge.next_functions[0][0]
        variable = getattr(edge, "variable", None)
        return None if variable is None else self.params.get(id(variable))

    def _layer(self, params) -> str:
        """The layer that owns ``params``, named as the model names it (``fc1``), for messages."""
        names = [self.names[id(p)] for p in params if p is not None]
        layer = names[0].rpartition(".")[0] if names else ""
        return f"layer {layer!r}" if layer else f"parameter {names[0]!r}" if names else "a layer"

    def _unsupported(self, params) -> PerSampleError:
        names = ", ".join(repr(self.names[id(p)]) for p in params)
        return PerSampleError(
            f"{self.op}: {names} got a gradient from a layer that does not compute per-sample gradients (a torch.nn "
            "layer, or a manualbp one without them). They are computed by manualbp.nn's Linear, LinearReLU, Conv2d, "
            "LayerNorm, BatchNorm in eval mode, RNN, LSTM, GRU and their cells; manualbp.convert(model) swaps torch.nn "
            "layers for them"
        )

    def _queue_finish(self) -> None:
        task = torch._C._current_graph_task_id()
        if task != self._task:  # the first layer of this backward: a fresh start (an earlier one may have failed)
            self._task = task
            self._begin()
            torch.autograd.Variable._execution_engine.queue_callback(self._run_finish)

    def _run_finish(self) -> None:
        self._task = None
        self._finish()
