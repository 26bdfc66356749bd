"""Batch and layer normalisation with hand-written backward passes.

Both normalise x to x̂ = (x - μ) / σ, σ = √(v + ε), and apply an optional affine map y = γ x̂ + β.
They differ in the set R of positions a statistic is taken over:

    batch_norm:  one (μ, v) per channel c, over R = N and every spatial dim       x: (N, C, *)
    layer_norm:  one (μ, v) per leading index, over R = the trailing normalized dims

With batch statistics (μ = mean_R x, v = mean_R (x - μ)², the biased variance) and g = γ ⊙ dL/dy,

    dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))

and with fixed statistics (batch norm in eval mode, using the running estimates) simply dL/dx = g / σ.
The backward recomputes μ and σ from the saved x with differentiable torch operations, so that
double backward sees their dependence on x (a saved, graph-less μ or σ would silently drop it).

The running estimates of batch norm are updated outside the Functions, under ``no_grad``, exactly as
torch does: r ← (1 - m) r + m s, with s the batch mean and the unbiased batch variance.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from manualbp.functional._validation import check_dim, check_floating, check_same_dtype, shape_str


def _channel_shape(x: torch.Tensor) -> list[int]:
    """(1, C, 1, ...): a per-channel vector shaped to broadcast against x of shape (N, C, *)."""
    return [1, -1] + [1] * (x.dim() - 2)


def _sum_over(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Σ over ``dims``; the identity when ``dims`` is empty (``t.sum(())`` would sum everything)."""
    return t.sum(dims) if dims else t


class BatchNormFunction(torch.autograd.Function):
    """Batch normalisation.   x, y: (N, C, *)   γ, β: (C,) or None   μ_r, v_r: (C,) or None (fixed statistics)

    Statistics per channel c over R = (N, *), n = |R|:
        batch statistics (μ_r = v_r = None):  μ = mean_R x,  v = mean_R (x - μ)²   (biased)
        fixed statistics (eval mode):        μ = μ_r,       v = v_r
    x̂ = (x - μ)/σ,  σ = √(v + ε),  y = γ x̂ + β.    With g = γ · dL/dy (g = dL/dy without γ):

        dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))       batch statistics
        dL/dx = g / σ                                           fixed statistics
        dL/dγ = Σ_R dL/dy · x̂          dL/dβ = Σ_R dL/dy
        dL/dμ_r = -Σ_R g / σ           dL/dv_r = -½ Σ_R g · (x - μ_r) / σ³     (fixed statistics only)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, mean, var, eps):
        return F.batch_norm(x, mean, var, weight, bias, training=mean is None, momentum=0.0, eps=eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mean, var, eps = inputs
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, var = ctx.saved_tensors
        dims = (0, *range(2, x.dim()))
        shape = _channel_shape(x)
        batch_stats = mean is None
        if batch_stats:
            var_c, mean_c = torch.var_mean(x, dims, correction=0, keepdim=True)
        else:
            mean_c, var_c = mean.reshape(shape), var.reshape(shape)
        inv_std = torch.rsqrt(var_c + ctx.eps)
        x_hat = (x - mean_c) * inv_std
        g = grad_out if weight is None else grad_out * weight.reshape(shape)

        grad_x = grad_w = grad_b = grad_mean = grad_var = None
        if ctx.needs_input_grad[0]:
            if batch_stats:
                grad_x = inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
            else:
                grad_x = g * inv_std
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad_out * x_hat).sum(dims)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dims)
        if not batch_stats and ctx.needs_input_grad[3]:
            grad_mean = -(g * inv_std).sum(dims)
        if not batch_stats and ctx.needs_input_grad[4]:
            grad_var = -0.5 * (g * x_hat * inv_std * inv_std).sum(dims)
        return grad_x, grad_w, grad_b, grad_mean, grad_var, None


class LayerNormFunction(torch.autograd.Function):
    """Layer normalisation over the trailing dims D = normalized_shape.

    x, y: (*, D)   γ: D or None   β: D or None;   statistics per leading index over R = D:
        μ = mean_R x,  v = mean_R (x - μ)² (biased),  x̂ = (x - μ)/σ,  σ = √(v + ε),  y = γ x̂ + β
    With g = dL/dx̂ = γ · dL/dy (g = dL/dy without γ):

        dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))
        dL/dγ = Σ_* dL/dy · x̂          dL/dβ = Σ_* dL/dy          (sums over the leading dims)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, normalized_shape, weight, bias, eps):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, normalized_shape, weight, bias, eps = inputs
        ctx.save_for_backward(x, weight)
        ctx.num_normalized = len(normalized_shape)
        ctx.eps = eps
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        lead = x.dim() - ctx.num_normalized
        dims = tuple(range(lead, x.dim()))
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
        inv_std = torch.rsqrt(var + ctx.eps)
        x_hat = (x - mean) * inv_std
        g = grad_out if weight is None else grad_out * weight

        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
        if weight is not None and ctx.needs_input_grad[2]:
            grad_w = _sum_over(grad_out * x_hat, tuple(range(lead)))
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = _sum_over(grad_out, tuple(range(lead)))
        return grad_x, None, grad_w, grad_b, None


def _check_channel_vectors(op: str, input: torch.Tensor, **vectors: torch.Tensor | None) -> None:
    """Raise ValueError unless every given vector has shape (C,), C = input.shape[1]."""
    channels = input.shape[1]
    for name, t in vectors.items():
        if t is not None and t.shape != (channels,):
            raise ValueError(
                f"{op}: input of shape {shape_str(input)} has {channels} channels (dim 1), but {name} has shape "
                f"{shape_str(t)}; expected ({channels},)"
            )


def update_running_stats(
    input: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float
) -> None:
    """In place, without grad: r ← (1 - momentum) r + momentum s, as torch's batch norm does in training.

    s is the per-channel batch mean for ``running_mean`` and the unbiased (n - 1) batch variance for
    ``running_var``; input: (N, C, *).
    """
    with torch.no_grad():
        dims = (0, *range(2, input.dim()))
        var, mean = torch.var_mean(input, dims, correction=1)
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var, alpha=momentum)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.batch_norm`` (same arguments and behaviour).

    input: (N, C, *)   running_mean, running_var, weight, bias: (C,) or None.
    ``training=True`` normalises with the batch statistics and, when running estimates are given,
    updates them in place with ``momentum``; ``training=False`` normalises with the running estimates.
    """
    op = "batch_norm"
    check_floating(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_same_dtype(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_dim(op, "input", input, range(2, 1 << 30))
    _check_channel_vectors(op, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together (or both be None)")
    if training:
        values_per_channel = input.numel() // input.shape[1] if input.shape[1] else 0
        if values_per_channel == 1:
            raise ValueError(
                f"{op}: expected more than 1 value per channel when training, got input of shape {shape_str(input)}"
            )
        if running_mean is not None:
            update_running_stats(input, running_mean, running_var, float(momentum))
        return BatchNormFunction.apply(input, weight, bias, None, None, float(eps))
    if running_mean is None:
        raise ValueError(f"{op}: running_mean and running_var must be given in evaluation mode (training=False)")
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, float(eps))


def _normalized_shape(op: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    if not shape:
        raise ValueError(f"{op}: normalized_shape must name at least one dimension, got {tuple(normalized_shape)}")
    return shape


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.layer_norm`` over the trailing ``normalized_shape`` dims.

    input: (*, *normalized_shape)   weight, bias: normalized_shape or None.
    """
    op = "layer_norm"
    check_floating(op, input=input, weight=weight, bias=bias)
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    shape = _normalized_shape(op, normalized_shape)
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"{op}: input of shape {shape_str(input)} does not end in normalized_shape {shape}: "
            f"expected input of shape (*, {', '.join(map(str, shape))})"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} of shape {shape_str(t)} does not match normalized_shape {shape}")
    return LayerNormFunction.apply(input, shape, weight, bias, float(eps))
