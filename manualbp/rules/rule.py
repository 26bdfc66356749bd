"""``Rule``: what carries the error backward through a parametrised layer; ``Backprop``, the default."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import ClassVar, Protocol, cast

import torch

#: A layer a rule attaches to, with its name in the model: a ``manualbp.nn`` Linear, LinearReLU or Conv2d (any
#: module with a ``weight`` and a ``forward_feedback(input, feedback)`` method), or a layer that names the weights
#: it sends the error back through in ``feedback_weights`` (MultiheadAttention's input projections).
Layer = tuple[str, torch.nn.Module]


class FeedbackLayer(Protocol):
    """What a rule reads and sets on a layer it drives, beyond what ``torch.nn.Module``'s typing shows (its
    ``__getattr__`` gives a Tensor or a Module): ``weight``, the rule, and ``forward_feedback``."""

    weight: torch.Tensor
    rule: Rule | None

    def forward_feedback(self, input: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor: ...


#: The name of the fixed buffer a rule may give each layer (saved in the state dict).
BUFFER = "feedback_weight"


def feedback_weights(layer: torch.nn.Module) -> tuple[str, ...]:
    """The names of the weights through which ``layer`` sends the error back: its ``feedback_weights`` when it
    names them (MultiheadAttention: ``in_proj_weight``, or ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight``), else ``("weight",)``."""
    return tuple(getattr(layer, "feedback_weights", ("weight",)))


def feedback_buffer(weight: str) -> str:
    """The name of the fixed buffer a rule gives the weight named ``weight``: ``weight`` -> ``feedback_weight``
    (``BUFFER``), ``in_proj_weight`` -> ``in_proj_feedback_weight``."""
    return weight.removesuffix("weight") + BUFFER


class Rule:
    """A learning rule: what carries the error backward through each Linear, LinearReLU and Conv2d of a model, and
    through MultiheadAttention's input projections.

    A parametrised layer's backward does two things with G = dL/dy: **feedback**, dL/dx = G · W, the error
    sent to the layer below, and **reduction**, dL/dW = Σ_n G_nᵀ x_n, the weight gradient. A rule changes only
    the feedback: it replaces W there by a matrix M of W's shape, computed from the layer's weight and, when
    the rule gives the layer one, its fixed buffer ``feedback_weight``:

        dL/dx = G · M            dL/dW = Σ_n G_nᵀ x_n  (unchanged)          dL/db = Σ_n G_n  (unchanged)

    (for a Conv2d, "G · M" is the transposed convolution of G with M). A layer with several such weights
    (MultiheadAttention's packed ``in_proj_weight``, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``) gets
    one M, and one buffer, per weight: ``in_proj_feedback_weight`` (``feedback_buffer``). The layer's Function is then
    ``manualbp.rules.feedback``'s: the layer's own hand-written backward with M saved in W's place. Attach a
    rule with ``manualbp.convert(model, rule=...)``; a layer prints its rule (``rule=feedback_alignment``).

    Write your own by subclassing and overriding one or both of:

    * ``feedback_matrix(weight, feedback_weight) -> M``: called in every forward pass that records a graph,
      with the layer's weight values (detached) and its buffer (None when it has none). M has ``weight``'s
      shape; it is a constant of the step (no gradient flows through it). Default: ``weight`` (backprop).
    * ``make_feedback_weight(weight, generator) -> Tensor | None``: the layer's fixed ``feedback_weight``,
      drawn once, when the rule is attached, from a ``torch.Generator`` seeded from ``seed`` (``generator()``;
      layers in ``model.modules()`` order); it is registered as a buffer, so it moves with ``.to()``, is saved in the
      state dict and a run resumes with the same one. Default: None (no buffer).
      ``uniform_feedback(shape, generator)`` draws as torch initialises a weight of that shape.

    Example, a rule whose feedback is backprop's plus noise, dL/dx = G · (W + σ ξ) with a fresh ξ ~ N(0, 1)
    every step::

        import torch
        import manualbp

        class NoisyFeedback(manualbp.rules.Rule):
            \"\"\"dL/dx = G · (W + σ ξ), ξ ~ N(0, 1) drawn afresh at every forward pass.\"\"\"

            name = "noisy_feedback"

            def __init__(self, sigma: float = 0.1, seed: int = 0) -> None:
                super().__init__(seed)
                self.sigma = sigma

            def feedback_matrix(self, weight, feedback_weight):
                return weight + self.sigma * torch.randn_like(weight)

        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        manualbp.convert(model, rule=NoisyFeedback(sigma=0.1))

    A rule that needs more than a matrix per layer (``DirectFeedbackAlignment``, which routes the output error
    to every layer) overrides ``attach`` and ``forward`` too.
    """

    #: How the rule is named: in ``manualbp.convert(model, rule=name)`` for the built-ins and in layer reprs.
    name: ClassVar[str] = "custom"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{type(self).__name__}: seed must be an int, got {seed!r}")
        self.seed = seed

    # ---- what a rule defines ---------------------------------------------------------------------------------

    def feedback_matrix(self, weight: torch.Tensor, feedback_weight: torch.Tensor | None) -> torch.Tensor:
        """M, of ``weight``'s shape, through which the error goes back: dL/dx = dL/dy · M. Backprop: W."""
        return weight

    def make_feedback_weight(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """The fixed ``feedback_weight`` buffer of a layer whose weight is ``weight``, or None for none."""
        return None

    # ---- machinery -------------------------------------------------------------------------------------------

    def attach(
        self, model: torch.nn.Module, layers: Sequence[Layer], example_input: torch.Tensor | None = None
    ) -> None:
        """Make this rule the one of every layer in ``layers`` (in the model's order), drawing each layer's
        ``feedback_weight`` from ``seed``. ``example_input`` is for rules that need the layers' input shapes."""
        generator = self.generator()
        for _, layer in layers:
            detach_rule(layer)
            for name in feedback_weights(layer):
                weight = getattr(layer, name)
                buffer = self.make_feedback_weight(weight.detach(), generator)
                if buffer is not None:
                    layer.register_buffer(feedback_buffer(name), buffer.to(device=weight.device, dtype=weight.dtype))
            cast(FeedbackLayer, layer).rule = self

    def feedback(self, layer: torch.nn.Module, weight: str = "weight") -> torch.Tensor:
        """M for ``layer``'s weight named ``weight``: ``feedback_matrix`` of its values (detached) and its buffer."""
        return self.feedback_matrix(getattr(layer, weight).detach(), getattr(layer, feedback_buffer(weight), None))

    def forward(self, layer: torch.nn.Module, input: torch.Tensor) -> torch.Tensor:
        """``layer``'s output for ``input`` with the error sent back through ``feedback_matrix``. The layer
        calls this only when a graph is recorded (without one, ``torch.no_grad`` or inference, it runs its
        plain op: there is no backward to change)."""
        return cast(FeedbackLayer, layer).forward_feedback(input, self.feedback(layer))

    def generator(self) -> torch.Generator:
        """The generator the fixed matrices are drawn from: seeded from ``seed`` and the rule's name, so that
        the draws differ from the layers' own initialisation after ``torch.manual_seed(seed)`` (the same
        seed and distribution would otherwise make B equal to W, and the rule backprop)."""
        # CRC-32 of the name and the seed: torch's CPU generator keeps 32 bits of a seed
        return torch.Generator().manual_seed(zlib.crc32(f"manualbp.rules.{self.name}:{self.seed}".encode()))

    def __repr__(self) -> str:
        return self.name


class Backprop(Rule):
    """Backpropagation: dL/dx = dL/dy · W, the true gradient. The default; a layer under it has no rule at all
    (``manualbp.convert(model, rule="backprop")`` removes any other), so it runs the plain layer's Function."""

    name = "backprop"

    def attach(
        self, model: torch.nn.Module, layers: Sequence[Layer], example_input: torch.Tensor | None = None
    ) -> None:
        for _, layer in layers:
            detach_rule(layer)


def detach_rule(layer: torch.nn.Module) -> None:
    """Remove any rule from ``layer``: its ``feedback_weight`` buffers and the rule's attributes (back to backprop)."""
    for name in feedback_weights(layer):
        layer._buffers.pop(feedback_buffer(name), None)
    for attribute in ("rule", "rule_position"):
        layer.__dict__.pop(attribute, None)


def uniform_feedback(
    shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A fixed random feedback matrix of ``shape``, drawn as torch initialises a weight of that shape
    (``torch.nn.Linear``, ``Conv2d``: kaiming_uniform with a = √5): U(−1/√fan_in, 1/√fan_in), fan_in =
    prod(shape[1:]). Drawn on the CPU from ``generator``, so the same seed gives the same matrix everywhere."""
    fan_in = math.prod(shape[1:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return torch.empty(tuple(shape), dtype=dtype).uniform_(-bound, bound, generator=generator)
