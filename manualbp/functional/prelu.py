"""PReLU: leaky ReLU with a learnable slope, one per channel or one for all, and its hand-written backward.

    y = max(0, x) + a · min(0, x)

The slope a is a parameter, so beside the elementwise feedback dL/dx = dL/dy ⊙ f'(x) the backward reduces
dL/dy ⊙ ∂y/∂a = dL/dy ⊙ min(0, x) over every element a slope multiplies. That reduction goes through the seam
(``manualbp.functional._reduction``) as ``AffineTerms`` (``manualbp.functional.normalization``): y is affine in
a with "x̂" = min(0, x), and a sample's gradient has a's size, so it is always materialised (N · C values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError, check_floating, check_same_device, check_same_dtype, shape_str
from manualbp.functional.normalization import AffineTerms, affine_reduction


def _slope_shape(x: torch.Tensor, weight: torch.Tensor) -> list[int]:
    """The shape that lays a out against x: (1, C, 1, ...) for one slope per channel, all ones for one slope."""
    shape = [1] * x.dim()
    if weight.numel() != 1:
        shape[1] = -1
    return shape


def _by_slope(t: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` (x's shape) as (N, *a.shape, P), P the elements each slope multiplies in a sample, and the dims a's
    gradient sums over (N's and P's). x of fewer than 2 dims has no batch dim and one slope: (1, P), summed over P
    (``AffineTerms`` reads a batch dim only from a 0 among the dims)."""
    if x.dim() < 2:
        return t.reshape(1, math.prod(x.shape)), (1,)
    first = 2 if weight.numel() != 1 else 1
    return t.reshape(x.shape[0], *weight.shape, math.prod(x.shape[first:])), (0, weight.dim() + 1)


@function
class PReLUFunction(torch.autograd.Function):
    """y = max(0, x) + a · min(0, x).   x, y: (N, C, *) with a: (C,), or any shape with one slope a: (1,) or ().
    (x of fewer than 2 dims has one channel, as in torch.) a is laid out along x's channel dim 1.

        dL/dx = dL/dy ⊙ (1 if x > 0 else a)
        dL/da_c = Σ_{n, positions} dL/dy ⊙ min(0, x)        (over all of channel c's elements; one slope: all)
        ẏ = ẋ ⊙ (1 if x > 0 else a) + ȧ ⊙ min(0, x)

    Per-sample gradients and clipping (``REDUCTION.mode``): dL/da_n = Σ_positions dL/dy_n ⊙ min(0, x_n),
    through ``AffineTerms`` (a sample's gradient has a's size).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight):
        return F.prelu(x, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(x > 0, grad_out, grad_out * weight.reshape(_slope_shape(x, weight)))
        if ctx.needs_input_grad[1]:
            g, dims = _by_slope(grad_out, x, weight)
            negative, _ = _by_slope(x.clamp(max=0), x, weight)
            if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
                grad_w, _ = REDUCTION.mode.reduce(ctx, AffineTerms(g, negative, dims, (True, False), (1, 2)))
            else:
                grad_w, _ = affine_reduction(g, negative, dims, True, False)
        return grad_x, None if grad_w is None else grad_w.reshape(weight.shape)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot):
        x, weight = ctx.saved_tensors
        shape = _slope_shape(x, weight)
        return tangent_sum(
            None if x_dot is None else torch.where(x > 0, x_dot, x_dot * weight.reshape(shape)),
            None if weight_dot is None else x.clamp(max=0) * weight_dot.reshape(shape),
        )


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.prelu``: max(0, x) + weight · min(0, x).

    input: (N, C, *) with weight (C,), or any shape with one slope, weight (1,) or (); the channel dim is dim 1,
    an input of fewer than 2 dims has one channel (as in torch). Under autocast the forward computes in the autocast
    dtype, as torch's: its ``F.prelu`` is on autocast's lower-precision lists.
    """
    op = "prelu"
    check_floating(op, input=input, weight=weight)
    check_same_dtype(op, input=input, weight=weight)
    check_same_device(op, input=input, weight=weight)
    if weight.dim() > 1:
        raise InputError(f"{op}: expected weight to be a scalar or 1-D tensor, got weight of shape {shape_str(weight)}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() not in (1, channels):
        raise InputError(
            f"{op}: weight of shape {shape_str(weight)} has {weight.numel()} slopes, but input of shape "
            f"{shape_str(input)} has {channels} channel(s) (dim 1; one for an input of fewer than 2 dims): expected "
            f"1 or {channels}"
        )
    input, weight = autocast_inputs(op, input, weight)
    return apply(PReLUFunction, input, weight)
