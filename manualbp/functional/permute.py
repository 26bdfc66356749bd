"""Permute: a reordering of dims whose backward is the inverse reordering."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import InputError, check_tensor, normalize_dim


@function
class PermuteFunction(torch.autograd.Function):
    """y = x with its dims reordered: y's dim i is x's dim p_i, as ``torch.permute`` (a view of x).

    x: (d_0, ..., d_{n-1})   y: (d_{p_0}, ..., d_{p_{n-1}})

    dL/dx = dL/dy permuted by the inverse p⁻¹ (x's dim p_i is y's dim i)
    ẏ = ẋ permuted by p
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dims):
        return x.permute(dims)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dims = inputs[1]

    @staticmethod
    def backward(ctx, grad_out):
        inverse = sorted(range(len(ctx.dims)), key=ctx.dims.__getitem__)
        return grad_out.permute(inverse), None

    @staticmethod
    def jvp(ctx, x_dot, _):
        return x_dot.permute(ctx.dims)


def permute(input: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Hand-differentiated ``torch.permute``: y's dim i is input's dim ``dims[i]`` (a view of input)."""
    check_tensor("permute", "input", input)
    order = tuple(normalize_dim("permute", d, input.dim()) for d in dims)
    if sorted(order) != list(range(input.dim())):
        raise InputError(
            f"permute: dims {tuple(dims)} are not an order of the {input.dim()} dims of input of shape "
            f"{tuple(input.shape)}"
        )
    return apply(PermuteFunction, input, order)
