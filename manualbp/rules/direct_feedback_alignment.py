"""Direct feedback alignment (Nøkland 2016): every hidden layer receives the output error through its own fixed B.

Design. In backprop, and in feedback alignment, the error reaches a hidden layer through the layers above
it. In DFA it comes straight from the output: the output error e = dL/dz (z: the logits, (N, K)) is
projected by a fixed random matrix B_l, one per hidden layer, and that is the error of the layer's output
h_l; the layer then reduces it as usual (its nonlinearity's derivative included):

    dL/dh_l = e · B_l   (reshaped to h_l's shape)        dL/dW_l = Σ_n δ_l,nᵀ x_l,n,  δ_l = dL/da_l

The error is delivered through the autograd graph, not through any state written in backward:

* each layer of the rule runs its Function with no feedback (``forward_feedback(input, None)``: M = None),
  so it sends no error to the layer below (the chain is cut: in DFA a layer's error does not come from
  above), while it keeps its input, and dL/dW stays a function of it (second derivatives included;
  detaching the input would have cut that too);
* the input of every layer but the first, h_l (the output of the previous block: layer l, its activation,
  pooling, flattening, dropout), is handed, with the previous layer's ``feedback_weight`` B_l, to
  ``DirectFeedbackFunction``, applied to the last layer's output: forward, a copy of the logits; backward,
  dL/dz passed on unchanged to the logits and e · B_l sent to each h_l.

So h_l receives exactly e · B_l, and on its way back to layer l it goes through the activation's (and
pooling's) own backward: for y = relu(a) the layer reduces (e · B_l) ⊙ [a > 0], Nøkland's
δa_l = (B_l e) ⊙ f'(a_l). This is why B_l is sized by the block's output, the next layer's input (for an MLP,
(K, hidden width); for a Conv2d followed by ReLU and pooling, (K, C·H'·W') of the pooled maps, routed back to
the convolution's output through the pool), rather than injected at the layer's own pre-activation output,
which would lose f'.

Consequences:

* nothing outlives a step: the forward pass keeps the h_l in a list on the rule only until the last layer
  takes them (each pass starts a new list at the first layer); the graph node keeps the B_l (buffers, no
  copy) and h_l's shapes, and is freed with the graph;
* gradient accumulation, several forward passes before one backward, ``retain_graph`` and
  ``torch.func``/``torch.compile`` all work as for any Function: each pass has its own node;
* the first layer's input gets no gradient (DFA sends none there);
* the rule drives the layers with ``forward_feedback`` (Linear, LinearReLU, Conv2d); MultiheadAttention's input
  projections are not among them: they stay backprop, part of the block that the error of the next driven layer
  (attention's own ``out_proj``) goes back through;
* the layers must run in the model's order, each once per pass (a ``Sequential``): a layer out of order
  raises ``RuntimeError``. The last layer must be a Linear (its ``out_features`` are the K classes) giving
  (N, K) logits;
* activation checkpointing (``torch.utils.checkpoint``, ``checkpoint_sequential``) with ``use_reentrant=False``
  gives the gradients of the run without it: the forward pass builds the same graph, and a layer run again by
  the recomputation in the backward pass (``torch._C._current_graph_task_id()`` set, as torch's module tracker
  tells a backward pass) computes its op again outside the pass in progress, only refilling saved tensors. With
  ``use_reentrant=True`` the block runs under ``torch.no_grad`` in the forward pass, so its layers run their
  plain op there, unseen by the rule, and their block outputs are not in the graph that the output error goes
  back through: the next layer's forward raises ``RuntimeError`` saying so (delivering e to them would take
  state written in the backward pass and matched to the right pass). A checkpointed block holding the output
  layer is refused too (``RuntimeError``, in the recomputation): its node delivers e from every layer's input.

The sizes of h_l come from the next layer: a Linear's ``in_features``; a Conv2d needs the image size, so
``manualbp.convert(model, rule="direct_feedback_alignment", example_input=x)`` (one batch of inputs) measures
every layer's input in a no-grad, eval-mode forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import InputError, shape_str
from manualbp.rules.rule import BUFFER, FeedbackLayer, Layer, Rule, detach_rule, uniform_feedback


class _Positioned(FeedbackLayer, Protocol):
    """A layer this rule drives: it also knows its position among the rule's layers."""

    rule_position: int


@function
class DirectFeedbackFunction(torch.autograd.Function):
    """Delivers the output error to the hidden layers: z: (N, K) logits; h_l: (N, *) the block outputs (the
    inputs of the layers after the first); B_l: (K, F_l), F_l = the size of h_l per sample. Called as
    ``(z, h_1, B_1, h_2, B_2, ...)``.

        forward:   z' = z  (a copy)
        backward:  with e = dL/dz':   dL/dz = e        dL/dh_l = (e · B_l) reshaped to h_l's shape
                   (in h_l's dtype; no gradient for B_l)

    Forward mode, the transposed map:  ż' = ż + Σ_l ḣ_l,flat · B_lᵀ
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, *hidden_and_feedback: torch.Tensor) -> torch.Tensor:
        return logits.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        _, *pairs = inputs
        feedback = pairs[1::2]
        ctx.save_for_backward(*feedback)
        ctx.save_for_forward(*feedback)
        ctx.hidden = [(h.shape, h.dtype) for h in pairs[0::2]]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads: list[torch.Tensor | None] = [grad_out]
        needs = ctx.needs_input_grad[1::2]
        for (shape, dtype), feedback, need in zip(ctx.hidden, ctx.saved_tensors, needs):
            grads.append(grad_out.matmul(feedback.to(grad_out.dtype)).reshape(shape).to(dtype) if need else None)
            grads.append(None)
        return tuple(grads)

    @staticmethod
    def jvp(ctx: Any, logits_dot: torch.Tensor, *pair_dots: torch.Tensor) -> torch.Tensor:
        out = logits_dot.clone()
        for h_dot, feedback in zip(pair_dots[0::2], ctx.saved_tensors):
            flat = h_dot.reshape(*logits_dot.shape[:-1], feedback.shape[1])
            out = out + flat.matmul(feedback.t().to(flat.dtype)).to(out.dtype)
        return out


def direct_feedback(logits: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``logits`` through ``DirectFeedbackFunction`` with the (h_l, B_l) ``pairs``; shapes checked."""
    op = "direct_feedback_alignment"
    if logits.dim() != 2:
        raise InputError(f"{op}: the last layer must give (N, classes) logits, got shape {shape_str(logits)}")
    flat: list[torch.Tensor] = []
    for hidden, feedback in pairs:
        size = math.prod(hidden.shape[1:]) if hidden.dim() > 1 else 0
        if hidden.dim() < 2 or hidden.shape[0] != logits.shape[0] or size != feedback.shape[1]:
            raise InputError(
                f"{op}: a layer's input of shape {shape_str(hidden)} does not fit its feedback_weight of shape "
                f"{shape_str(feedback)} (expected (N={logits.shape[0]}, ...) with {feedback.shape[1]} features per "
                "sample; pass example_input= to manualbp.convert so the sizes are measured)"
            )
        flat += [hidden, feedback]
    return apply(DirectFeedbackFunction, logits, *flat)


class DirectFeedbackAlignment(Rule):
    """Direct feedback alignment (Nøkland, "Direct feedback alignment provides learning in deep neural
    networks", NeurIPS 2016).

    Every layer before the last receives the output error e = dL/d(logits), (N, K), projected by its own
    fixed random matrix B_l, its buffer ``feedback_weight`` of shape (K, features per sample of the layer's
    block output, i.e. of the next layer's input):

        dL/dh_l = e · B_l          (instead of the error from the layer above; then through h_l's activation)
        dL/dW_l = Σ_n δ_l,nᵀ x_l,n   (the layer's own reduction, unchanged)

    The last layer learns from e as in backprop and has no buffer; no error reaches the model's input. See the
    module docstring for how e is delivered (a Function at the output, no state written in backward) and why
    B_l is sized by the block's output.

    B_l is drawn once, when the rule is attached, from a generator seeded from ``seed``: uniform, at the scale
    torch initialises a (K, F_l) weight, U(−1/√F_l, 1/√F_l) (``uniform_feedback``; Nøkland draws B uniformly,
    and this scale makes e · B_l as large as e · W_out at initialisation for a hidden layer of the output
    layer's width). Saved in the state dict. With one hidden layer and B = the output layer's weight, the
    gradients are backprop's.
    """

    name = "direct_feedback_alignment"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._count = 0
        self._reset()

    def _reset(self) -> None:
        """Forget the pass in progress: the block outputs h_l and the B_l of the layers that ran."""
        self._hidden: list[torch.Tensor] = []
        self._feedback: list[torch.Tensor] = []
        self._next = 0

    def attach(
        self, model: torch.nn.Module, layers: Sequence[Layer], example_input: torch.Tensor | None = None
    ) -> None:
        op = self.name
        layers = [(name, layer) for name, layer in layers if callable(getattr(type(layer), "forward_feedback", None))]
        if len(layers) < 2:
            found = ", ".join(f"{name} ({type(layer).__name__})" for name, layer in layers)
            raise ValueError(
                f"{op}: needs at least two layers it drives (manualbp Linear, LinearReLU, Conv2d: the hidden ones and "
                f"the output), found {len(layers)}{f': {found}' if found else ''}{_undriven(model, layers)}"
            )
        last_name, last = layers[-1]
        classes = getattr(last, "out_features", None)
        if not isinstance(classes, int):
            raise ValueError(
                f"{op}: the last layer, {last_name!r} ({type(last).__name__}), must be a Linear: its out_features "
                "are the classes"
            )
        sizes = _input_sizes(model, layers, example_input)
        generator = self.generator()
        for position, (_, layer) in enumerate(layers):
            detach_rule(layer)
            driven = cast(_Positioned, layer)
            if position < len(layers) - 1:
                size = sizes[position + 1]
                assert size is not None, "only the first layer's input size may be unknown (_input_sizes raises)"
                buffer = uniform_feedback((classes, size), generator)
                layer.register_buffer(BUFFER, buffer.to(device=driven.weight.device, dtype=driven.weight.dtype))
            driven.rule = self
            driven.rule_position = position
        self._count = len(layers)
        self._reset()

    def forward(self, layer: torch.nn.Module, input: torch.Tensor) -> torch.Tensor:
        driven = cast(_Positioned, layer)
        position = driven.rule_position
        # run inside a backward pass: an activation checkpoint recomputing its block (torch.compile traces the forward
        # pass only, and traces a checkpoint as one op)
        if not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1:
            return self._recompute(layer, position, input)
        if position == 0:
            self._reset()
        elif position != self._next:
            expected = self._next
            self._reset()
            skipped = f"layer {expected}" if position == expected + 1 else f"layers {expected} to {position - 1}"
            why = (
                f", and record a graph: if {skipped} ran under torch.no_grad or inside an activation checkpoint with "
                "use_reentrant=True (which runs its block so), the rule did not see it and cannot send it the output "
                "error; checkpoint with torch.utils.checkpoint(..., use_reentrant=False)"
                if position > expected
                else ""
            )
            raise RuntimeError(
                f"{self.name}: layer {position} of the rule ran where layer {expected} was expected; the layers must "
                f"run in the model's order, each once per forward pass (a Sequential){why}"
            )
        if position > 0:
            self._hidden.append(input)
        output = driven.forward_feedback(input, None)  # no error sent down the chain: see the module docstring
        if position < self._count - 1:
            self._feedback.append(getattr(layer, BUFFER))
            self._next = position + 1
            return output
        pairs = list(zip(self._hidden, self._feedback))
        self._reset()
        return direct_feedback(output, pairs)

    def _recompute(self, layer: torch.nn.Module, position: int, input: torch.Tensor) -> torch.Tensor:
        """A hidden layer run again by an activation checkpoint (``torch.utils.checkpoint`` with
        ``use_reentrant=False``) during the backward pass, to recompute the tensors its block saved: the same op as
        in the forward pass (no error sent down), outside the pass in progress. Its input already received e · B_l
        in the forward pass's graph, which the checkpoint keeps; the recomputation only refills saved tensors.

        The output layer is refused: its forward builds the node that delivers e to every layer, from the inputs
        of the whole pass, which a recomputation of one block does not have (checkpoint the blocks before it, as
        ``checkpoint_sequential`` does, which never checkpoints its last segment). So is a block first run under
        ``use_reentrant=True``, whose layers the forward pass did not see; that case fails earlier, in the forward
        pass, unless the block holds the output layer."""
        if position == self._count - 1:
            raise RuntimeError(
                f"{self.name}: the output layer (layer {position} of the rule) ran inside an activation checkpoint "
                "(torch.utils.checkpoint): its forward delivers the output error to every layer, which recomputing "
                "its block cannot rebuild; keep the output layer out of the checkpoint (checkpoint_sequential leaves "
                "the last segment out)"
            )
        return cast(_Positioned, layer).forward_feedback(input, None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_hidden=[], _feedback=[], _next=0)  # a copy never carries a pass in progress
        return state


def _undriven(model: torch.nn.Module, layers: Sequence[Layer]) -> str:
    """``"; it does not apply to lstm (LSTM)"``: the modules of ``model`` with parameters of their own that are not
    among ``layers`` (a recurrent layer, a torch.nn layer left unconverted), or ``""`` when there are none."""
    driven = {id(layer) for _, layer in layers}
    others = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if id(module) not in driven and next(module.parameters(recurse=False), None) is not None
    ]
    return f"; it does not apply to {', '.join(others)}" if others else ""


def _input_sizes(
    model: torch.nn.Module, layers: Sequence[Layer], example_input: torch.Tensor | None
) -> Sequence[int | None]:
    """The number of features per sample of each layer's input: measured in one no-grad, eval-mode forward pass
    of ``example_input`` when given, else a Linear's ``in_features`` (None for a layer whose size the arguments
    do not tell, such as a Conv2d: then an error asks for ``example_input``)."""
    if example_input is not None:
        return _measure(model, layers, example_input)
    sizes = []
    for position, (name, layer) in enumerate(layers):
        size = getattr(layer, "in_features", None)
        if position > 0 and not isinstance(size, int):
            raise ValueError(
                f"direct_feedback_alignment: the size of the input of {name!r} ({type(layer).__name__}) depends on "
                "the images; pass a batch of inputs: manualbp.convert(model, rule=..., example_input=x)"
            )
        sizes.append(size)
    return sizes


def _measure(model: torch.nn.Module, layers: Sequence[Layer], example_input: torch.Tensor) -> list[int]:
    sizes: dict[int, int] = {}

    def record(module: torch.nn.Module, args: tuple) -> None:
        sizes.setdefault(id(module), math.prod(args[0].shape[1:]))

    modes = {module: module.training for module in model.modules()}
    handles = [layer.register_forward_pre_hook(record) for _, layer in layers]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    missing = [name for name, layer in layers if id(layer) not in sizes]
    if missing:
        raise ValueError(f"direct_feedback_alignment: the example input did not reach {', '.join(missing)}")
    return [sizes[id(layer)] for _, layer in layers]
