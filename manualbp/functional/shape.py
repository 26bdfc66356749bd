"""Flatten: a reshape whose backward is the inverse reshape."""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, compile_twin
from manualbp.functional._validation import InputError, check_tensor, normalize_dim


@compile_twin
class FlattenFunction(torch.autograd.Function):
    """y = x reshaped to ``out_shape`` (dims start_dim..end_dim merged into one).

    x: (d0, ..., d_{n-1})   y: (d0, ..., d_{s-1}, d_s · ... · d_e, d_{e+1}, ...)

    dL/dx = dL/dy reshaped back to x's shape (``reshape``, since dL/dy may be non-contiguous)
    ẏ = ẋ reshaped to ``out_shape``
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, out_shape):
        return x.reshape(out_shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.in_shape = inputs[0].shape
        ctx.out_shape = inputs[1]

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.reshape(ctx.in_shape), None

    @staticmethod
    def jvp(ctx, x_dot, _):
        return x_dot.reshape(ctx.out_shape)


def flatten(input: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    """Hand-differentiated ``torch.flatten``: merge dims ``start_dim`` to ``end_dim`` (inclusive)."""
    check_tensor("flatten", "input", input)
    start = normalize_dim("flatten", start_dim, input.dim(), "start_dim")
    end = normalize_dim("flatten", end_dim, input.dim(), "end_dim")
    if start > end:
        raise InputError(
            f"flatten: start_dim ({start_dim}) comes after end_dim ({end_dim}) for an input of shape "
            f"{tuple(input.shape)}"
        )
    if input.dim() == 0:
        out_shape = (1,)
    else:
        shape = tuple(input.shape)
        merged = 1
        for size in shape[start : end + 1]:
            merged *= size
        out_shape = shape[:start] + (merged,) + shape[end + 1 :]
    return apply(FlattenFunction, input, out_shape)
