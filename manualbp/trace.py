r"""``manualbp.trace(model)``: record what backpropagation computes, layer by layer.

For a network of layers y_l = f_l(x_l; W_l) (x_{l+1} = y_l) and a scalar loss L, backpropagation
carries the *error signal* of each layer backwards,

    δ_l = ∂L/∂y_l,         δ_{l-1} = ∂L/∂y_{l-1} = (∂y_l/∂x_l)ᵀ δ_l,

and each layer turns the error arriving at its output into its parameter gradients; for a linear
layer y = x Wᵀ + b over a batch of N rows,

    ∂L/∂W_l = δ_lᵀ · x_l  (Σ_n δ_{l,n} x_{l,n}ᵀ),       ∂L/∂b_l = Σ_n δ_{l,n}.

At the last layer of a classifier trained with mean cross entropy the error is the familiar
δ_out = (softmax(z) − onehot(t)) / N.

``trace`` records, for every leaf module (a module without children, named by its qualified name:
``fc1``, ``act1``, ``features.0``), during one forward and backward inside the ``with`` block:

* ``activation``: the module's output y_l (a detached copy), from a forward hook;
* ``error``: δ_l = ∂L/∂y_l, from a *tensor* hook the forward hook puts on that output. A tensor hook,
  not ``register_full_backward_hook``: it sees the gradient of the output tensor whatever Function made
  it (manualbp's hand-written ``autograd.Function`` nodes and torch's own alike) and adds no node to the
  graph, so the backward that runs is exactly the one that would run untraced. ``None`` when the output
  does not require grad (e.g. ``flatten`` of an input that does not require grad) or no backward ran;
* ``param_grads``: ∂L/∂W for each of the module's own parameters (``"weight"``, ``"bias"``), from tensor
  hooks on the parameters: the gradient this backward computes, before it is accumulated into ``.grad``
  (so a ``.grad`` left over from earlier steps does not leak in, and ``torch.autograd.grad`` is traced as
  well as ``loss.backward()``).

What is kept: the latest *step* only. A step starts when ``model``'s forward is called; it clears the
previous record. ``Trace.layers`` lists the leaf modules in the order that forward ran them; a module
called twice in one forward keeps its last output (and that output's error); a parameter used twice has
its gradient contributions summed, as ``.grad`` would. Record a history by opening one trace per step
(as ``manualbp.callbacks.LearningAnimation`` does) or by copying ``trace.layers`` after each backward.

Every hook is removed when the block exits, normally or by an exception.

    >>> with manualbp.trace(model) as tr:
    ...     loss = F.cross_entropy(model(x), t)
    ...     loss.backward()
    >>> tr.layers["out"].error          # (softmax - onehot) / N
    >>> tr.layers["fc1"].param_grads["weight"]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["LayerTrace", "Trace", "trace"]


@dataclass
class LayerTrace:
    """What one leaf module saw in the traced step.

    ``activation``: its output y (detached copy). ``error``: ∂L/∂y, same shape as ``activation``, or None
    when no gradient reached the output. ``param_grads``: parameter name (as the module names it) -> ∂L/∂W
    of this step; parameters no gradient reached are absent.
    """

    activation: torch.Tensor
    error: torch.Tensor | None = None
    param_grads: dict[str, torch.Tensor] = field(default_factory=dict)


class Trace:
    """The record of ``manualbp.trace``: ``layers`` maps qualified module name -> ``LayerTrace``, in forward order.

    ``steps`` counts the forwards of the model seen in the block (only the last one is kept).
    """

    def __init__(self) -> None:
        self.layers: OrderedDict[str, LayerTrace] = OrderedDict()
        self.steps = 0

    def __getitem__(self, name: str) -> LayerTrace:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def activations(self) -> OrderedDict[str, torch.Tensor]:
        """name -> y_l."""
        return OrderedDict((name, layer.activation) for name, layer in self.layers.items())

    def errors(self) -> OrderedDict[str, torch.Tensor | None]:
        """name -> δ_l = ∂L/∂y_l."""
        return OrderedDict((name, layer.error) for name, layer in self.layers.items())

    def param_grads(self) -> OrderedDict[str, torch.Tensor]:
        """Qualified parameter name (``fc1.weight``, as ``model.named_parameters()`` has it) -> ∂L/∂W."""
        return OrderedDict(
            (f"{name}.{pname}" if name else pname, grad)
            for name, layer in self.layers.items()
            for pname, grad in layer.param_grads.items()
        )

    def __repr__(self) -> str:
        rows = []
        for name, layer in self.layers.items():
            error = "none" if layer.error is None else f"|δ|={layer.error.norm():.3g}"
            grads = " ".join(f"|∂L/∂{p}|={g.norm():.3g}" for p, g in layer.param_grads.items())
            rows.append(f"  {name}: y {tuple(layer.activation.shape)} {error} {grads}".rstrip())
        return "Trace(\n" + "\n".join(rows) + "\n)"


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


@contextmanager
def trace(model: torch.nn.Module) -> Iterator[Trace]:
    """Record each leaf layer's activation, error signal ∂L/∂y and parameter gradients ∂L/∂W (see module doc).

    Works on manualbp layers and torch.nn layers alike; the hooks are removed when the block exits.
    """
    record = Trace()
    is_open = [True]
    handles: list[torch.utils.hooks.RemovableHandle] = []
    leaves = [(name, module) for name, module in model.named_modules() if not any(True for _ in module.children())]
    param_order = {name: [p for p, _ in module.named_parameters(recurse=False)] for name, module in leaves}

    def start_step(module: torch.nn.Module, args: object) -> None:
        record.steps += 1
        record.layers = OrderedDict()

    def forward_hook(name: str) -> Callable[[torch.nn.Module, object, object], None]:
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            out = _first_tensor(output)
            if out is None:
                return
            step = record.steps
            layer = LayerTrace(out.detach().clone())
            record.layers.pop(name, None)  # a repeated call moves to its latest place
            record.layers[name] = layer
            if out.requires_grad:

                def on_grad(grad: torch.Tensor | None) -> None:
                    # None: no gradient reached this output (a Function that does not materialise zeros)
                    if grad is not None and is_open[0] and record.steps == step and record.layers.get(name) is layer:
                        layer.error = grad.detach().clone()

                out.register_hook(on_grad)  # lives with the output tensor; inert after the step or the block

        return hook

    def param_hook(name: str, pname: str) -> Callable[[torch.Tensor | None], None]:
        def hook(grad: torch.Tensor | None) -> None:
            layer = record.layers.get(name)
            if layer is None or grad is None:
                return
            grad = grad.detach()
            previous = layer.param_grads.get(pname)
            layer.param_grads[pname] = grad.clone() if previous is None else previous + grad
            if previous is None:  # keep the module's parameter order, whatever order the backward ran in
                layer.param_grads = {p: layer.param_grads[p] for p in param_order[name] if p in layer.param_grads}

        return hook

    try:
        handles.append(model.register_forward_pre_hook(start_step))
        for name, module in leaves:
            handles.append(module.register_forward_hook(forward_hook(name)))
            for pname, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    handles.append(param.register_hook(param_hook(name, pname)))
        yield record
    finally:
        is_open[0] = False
        for handle in handles:
            handle.remove()
