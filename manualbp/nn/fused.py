"""Fused layers: two torch.nn layers in one hand-differentiated op. Not torch twins (torch.nn has no such
class), so they are plain ``torch.nn.Module`` subclasses, not ``ManualModule``s (which would register a
twin); each names its autograd counterpart through ``to_torch``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, cast

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.functional.pooling import pool_window
from manualbp.nn._base import layer_name, share_state
from manualbp.rules.feedback import linear_relu_feedback

if TYPE_CHECKING:
    from manualbp.rules.rule import Rule


class ReLUMaxPool2d(torch.nn.Module):
    """``torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=...))``
    as one layer whose backward keeps the pooling indices and its own output (which the next layer keeps
    anyway), not the ReLU's output; backward in ``manualbp.functional.ReLUMaxPool2dFunction``.

    The arguments are ``torch.nn.MaxPool2d``'s, in its order; ``dilation`` other than 1 and
    ``return_indices=True`` raise ``NotImplementedError``. No parameters or buffers.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        name = layer_name(self)
        _, _, _, dilation_pair = pool_window(name, kernel_size, stride, padding, dilation)
        if dilation_pair != (1, 1):
            raise NotImplementedError(f"{name}: dilation={dilation!r} is not supported (only 1)")
        if return_indices:
            raise NotImplementedError(
                f"{name}: return_indices=True is not supported (torch.nn.ReLU then torch.nn.MaxPool2d gives them)"
            )
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.relu_max_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"
        )

    def _get_name(self) -> str:
        return "manualbp." + type(self).__name__

    def to_torch(self) -> torch.nn.Sequential:
        """The autograd counterpart: ``Sequential(ReLU(), MaxPool2d(...))`` with this configuration, in this mode."""
        twin = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.MaxPool2d(self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        )
        return twin.train(self.training)


class _AffineLayer(torch.nn.Module):
    """The parameters of ``torch.nn.Linear`` (``weight`` (out, in), ``bias`` (out,) or None), its constructor,
    initialisation and ``extra_repr``, for layers that compute more than the affine map: they must not pass
    ``isinstance(m, torch.nn.Linear)``, or tools that find Linears by type (LoRA wrappers, pruning,
    quantization) would treat them as one and silently compute something else."""

    __constants__: ClassVar[list[str]] = ["in_features", "out_features"]
    bias: torch.Tensor | None  # a Parameter, or None (registered as such)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            check_int(layer_name(self), name, value, 0)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(torch.empty((out_features, in_features), device=device, dtype=dtype))
        self.register_parameter(
            "bias", torch.nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        )
        self.reset_parameters()

    # torch.nn.Linear's own (the same draws, in the same order; the same repr): they read only the attributes above
    reset_parameters = cast("Callable[[_AffineLayer], None]", torch.nn.Linear.reset_parameters)
    extra_repr = cast("Callable[[_AffineLayer], str]", torch.nn.Linear.extra_repr)


class LinearReLU(_AffineLayer):
    """``torch.nn.Linear`` followed by ``torch.nn.ReLU`` as one layer: y = max(x W^T + b, 0); backward in
    ``manualbp.functional.LinearReLUFunction`` (one mask of dL/dy, no separate ReLU output or gradient tensor).

    Constructor, parameters (``weight``, ``bias``), initialisation and ``extra_repr`` are
    ``torch.nn.Linear``'s, so a Linear's state dict loads into it and back; but it is no ``torch.nn.Linear``
    (its output is the ReLU's, and a forward hook sees that). Not a ``ManualModule``: its autograd
    counterpart (``to_torch``) is ``AutogradLinearReLU``, which keeps the parameter names.

    ``rule``: the learning rule sending the error back (``manualbp.convert(model, rule=...)``, see
    ``manualbp.rules``); None, the default, is backprop through the plain Function.
    """

    rule: Rule | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.rule is None or not torch.is_grad_enabled():  # no rule, or no backward to change
            return MF.linear_relu(input, self.weight, self.bias)
        return self.rule.forward(self, input)

    def forward_feedback(self, input: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
        """relu(x Wᵀ + b), with the error sent back through ``feedback`` (W's shape) instead of W
        (``manualbp.rules.LinearReLUFeedbackFunction``); None: no error sent back (dL/dx = None)."""
        return linear_relu_feedback(input, self.weight, self.bias, feedback)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.rule is None else f", rule={self.rule!r}")

    def _get_name(self) -> str:
        return "manualbp." + type(self).__name__

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> LinearReLU:
        """A LinearReLU sharing ``linear``'s Parameters, hooks and mode (nothing is copied)."""
        return share_state(linear, cls)

    def to_torch(self) -> AutogradLinearReLU:
        """The autograd counterpart sharing this layer's Parameters, hooks and mode."""
        return share_state(self, AutogradLinearReLU)


class AutogradLinearReLU(_AffineLayer):
    """``relu(x W^T + b)`` computed by torch's own ops (autograd's backward): the reference that ``LinearReLU``
    is checked against and what ``manualbp.to_torch`` turns it into. Parameter names are ``torch.nn.Linear``'s,
    so state dicts of both match."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.nn.functional.linear(input, self.weight, self.bias))
