"""Flatten: a reshape whose backward is the inverse reshape."""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import InputError, check_tensor, normalize_dim


@function
class FlattenFunction(torch.autograd.Function):
    """y = x with dims start_dim..end_dim (both ≥ 0, normalised) merged into one, as ``torch.flatten``.

    x: (d0, ..., d_{n-1})   y: (d0, ..., d_{s-1}, d_s · ... · d_e, d_{e+1}, ...)

    dL/dx = dL/dy reshaped back to x's shape (``reshape``, since dL/dy may be non-contiguous)
    ẏ = ẋ flattened the same way

    The dims are passed as two ints, not as the output shape: ``torch.jit.trace`` (and so the TorchScript
    ONNX exporter) cannot record a Function whose argument is a tuple.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, start_dim, end_dim):
        return x.flatten(start_dim, end_dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.in_shape = inputs[0].shape
        ctx.dims = inputs[1:]

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.reshape(ctx.in_shape), None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        return x_dot.flatten(*ctx.dims)


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
    return apply(FlattenFunction, input, start, end)
