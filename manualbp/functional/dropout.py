"""Inverted dropout: the random mask is drawn outside the Function, which is then deterministic.

``inplace=True`` applies ``DropoutInplaceFunction``, which writes y into x (see
``manualbp.functional._inplace``); the backward needs only the mask, as out of place.
"""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._inplace import vmap_in_place
from manualbp.functional._validation import check_floating, check_inplace_target, check_unit_interval


@function
class DropoutFunction(torch.autograd.Function):
    """y = x ⊙ m.   x, m, y: same shape; m holds 0 (dropped) or 1/(1-p) (kept).

    dL/dx = dL/dy ⊙ m          (m is a constant: no gradient flows to it)
    ẏ = ẋ ⊙ m                  (nor does a tangent flow from it)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, mask):
        return x * mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None

    @staticmethod
    def jvp(ctx, x_dot, _):
        (mask,) = ctx.saved_tensors
        return x_dot * mask


@function
class DropoutInplaceFunction(torch.autograd.Function):
    """y = x ⊙ m written into x (``dropout(x, p, inplace=True)``).   x, m, y: same shape.

    dL/dx = dL/dy ⊙ m          ẏ = ẋ ⊙ m  (written into ẋ)

    The mask alone is saved, as out of place.
    """

    generate_vmap_rule = False

    @staticmethod
    def forward(x, mask):
        x.mul_(mask)
        return x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None

    @staticmethod
    def jvp(ctx, x_dot, _):
        (mask,) = ctx.saved_tensors
        return x_dot.mul_(mask)

    @staticmethod
    def vmap(info, in_dims, x, mask):
        return vmap_in_place(DropoutInplaceFunction, in_dims, x, mask)


def dropout_mask(input: torch.Tensor, p: float) -> torch.Tensor:
    """A mask like ``input`` with 1/(1-p) where kept (probability 1-p) and 0 where dropped.

    Drawn as torch's own dropout draws it, so that with the same seed both drop the same elements:
    on the CPU ``empty_like(input).bernoulli_(1 - p)``; on an accelerator, where torch's dropout is the
    fused ``native_dropout`` kernel, the keep-mask that kernel returns.
    """
    if p == 1.0:
        return torch.zeros_like(input)
    if input.device.type == "cpu":
        return torch.empty_like(input).bernoulli_(1.0 - p).div_(1.0 - p)
    _, keep = torch.native_dropout(input.detach(), p, True)
    return keep.to(input.dtype).div_(1.0 - p)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.dropout``; identity when not ``training`` or p == 0;
    ``inplace=True`` overwrites and returns ``input``."""
    check_floating("dropout", input=input)
    check_unit_interval("dropout", "probability", p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        check_inplace_target("dropout", input)
    return apply(DropoutInplaceFunction if inplace else DropoutFunction, input, dropout_mask(input, p))
