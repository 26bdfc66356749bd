"""Batch, layer, RMS, group, instance and channels-first layer normalisation with hand-written backward passes.

All of them normalise x to x̂ = (x - μ) / σ, σ = √(v + ε), and apply an optional affine map y = γ x̂ + β.
They differ in the set R of positions a statistic is taken over:

    batch_norm:     one (μ, v) per channel c, over R = N and every spatial dim       x: (N, C, *)
    layer_norm:     one (μ, v) per leading index, over R = the trailing normalized dims
    rms_norm:       as layer_norm, but not centred: μ = 0, v = mean_R x² (the mean square), and no β
    group_norm:     one (μ, v) per sample and group of C/G channels, over R = its channels × the spatial dims
    instance_norm:  group_norm with G = C (R = the spatial dims), or batch norm's fixed statistics (eval)
    channels_first_layer_norm:  one (μ, v) per sample and spatial position, over R = the C channels (dim 1)

With batch statistics (μ = mean_R x, v = mean_R (x - μ)², the biased variance) and g = γ ⊙ dL/dy,

    dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))

and with fixed statistics (batch norm in eval mode, using the running estimates) simply dL/dx = g / σ.
Without centring (rms_norm) the mean_R g term drops out: dL/dx = (1/σ) (g - x̂ · mean_R (g · x̂)).
Forward mode (jvp) linearises the same map; with batch statistics their tangents μ̇ = mean_R ẋ and
σ̇ = mean_R (ẋ · x̂) are part of it, which gives, with tangents ẋ, γ̇, β̇,

    ẏ = (γ/σ) (ẋ - mean_R ẋ - x̂ · mean_R (ẋ · x̂)) + γ̇ x̂ + β̇

and with fixed statistics (tangents μ̇_r, v̇_r of the running estimates)

    ẏ = γ ((ẋ - μ̇_r)/σ - ½ x̂ v̇_r/σ²) + γ̇ x̂ + β̇
The backward recomputes μ and σ from the saved x with differentiable torch operations, so that
double backward sees their dependence on x (a saved, graph-less μ or σ would silently drop it).

The running estimates of batch and instance norm are updated outside the Functions, under ``no_grad``, exactly
as torch does: r ← (1 - m) r + m s, with s the batch mean and the unbiased batch variance (instance norm: each
sample's, averaged over the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from manualbp.functional._autocast import autocast_inputs, autocast_output
from manualbp.functional._dispatch import apply, function
from manualbp.functional._inplace import scratch_writable
from manualbp.functional._reduction import REDUCTION, per_sample_factor
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    DtypeError,
    InputError,
    check_dim,
    check_floating,
    check_int,
    check_non_negative,
    check_same_device,
    check_same_dtype,
    check_unit_interval,
    is_int,
    shape_str,
)


def _channel_shape(x: torch.Tensor) -> list[int]:
    """(1, C, 1, ...): a per-channel vector shaped to broadcast against x of shape (N, C, *)."""
    return [1, -1] + [1] * (x.dim() - 2)


def _sum_over(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Σ over ``dims``; the identity when ``dims`` is empty (``t.sum(())`` would sum everything)."""
    return t.sum(dims) if dims else t


@function
class BatchNormFunction(torch.autograd.Function):
    """Batch normalisation.   x, y: (N, C, *)   γ, β: (C,) or None   μ_r, v_r: (C,) or None (fixed statistics)
    (``batched=False``: x, y of one sample, (C, *), as a batch of one; instance norm's layers take it in eval mode)

    Statistics per channel c over R = (N, *), n = |R|:
        batch statistics (μ_r = v_r = None):  μ = mean_R x,  v = mean_R (x - μ)²   (biased)
        fixed statistics (eval mode):        μ = μ_r,       v = v_r
    x̂ = (x - μ)/σ,  σ = √(v + ε),  y = γ x̂ + β.    With g = γ · dL/dy (g = dL/dy without γ):

        dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))       batch statistics
        dL/dx = g / σ                                           fixed statistics
        dL/dγ = Σ_R dL/dy · x̂          dL/dβ = Σ_R dL/dy
        dL/dμ_r = -Σ_R g / σ           dL/dv_r = -½ Σ_R g · (x - μ_r) / σ³     (fixed statistics only)

    Forward mode (tangents ẋ, γ̇, β̇, μ̇_r, v̇_r; an absent one is zero), ẏ = γ · dx̂ + γ̇ x̂ + β̇ with

        dx̂ = (1/σ) (ẋ - mean_R ẋ - x̂ · mean_R (ẋ · x̂))           batch statistics (they move with x)
        dx̂ = (ẋ - μ̇_r) / σ - ½ x̂ v̇_r / σ²                       fixed statistics
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, mean, var, eps, batched):
        y = F.batch_norm(_batch_of(x, batched), mean, var, weight, bias, training=mean is None, momentum=0.0, eps=eps)
        return y if batched else y.squeeze(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mean, var, eps, batched = inputs
        ctx.save_for_backward(x, weight, mean, var)
        ctx.save_for_forward(x, weight, mean, var)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.batched = batched

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None, None, None, None
        x, weight, mean, var = ctx.saved_tensors
        x, grad_out = _batch_of(x, ctx.batched), _batch_of(grad_out, ctx.batched)
        dims = (0, *range(2, x.dim()))
        shape = _channel_shape(x)
        batch_stats = mean is None
        if batch_stats and REDUCTION.mode is not None:  # per-sample gradients: batch statistics mix the samples
            REDUCTION.mode.refuse(ctx, _affine_ordinals(weight), "batch_norm with batch statistics (training mode)")
        if batch_stats and REDUCTION.mode is None and scratch_writable():
            grads = _batch_statistics_first_backward(ctx, grad_out, x, weight)
            grad_x = grads[0] if ctx.batched or grads[0] is None else grads[0].squeeze(0)
            return grad_x, *grads[1:], None, None, None, None
        x_hat, inv_std = _batch_normalize(x, mean, var, ctx.eps)
        g = grad_out if weight is None else grad_out * weight.reshape(shape)

        grad_x = grad_mean = grad_var = None
        if ctx.needs_input_grad[0]:
            grad_x = _normalized_grad(g, x_hat, inv_std, dims) if batch_stats else g * inv_std
            grad_x = grad_x if ctx.batched else grad_x.squeeze(0)
        needs = (weight is not None and ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        grad_w, grad_b = _channel_affine_grads(ctx, grad_out, x_hat, weight, needs)
        if not batch_stats and ctx.needs_input_grad[3]:
            grad_mean = -(g * inv_std).sum(dims)
        if not batch_stats and ctx.needs_input_grad[4]:
            grad_var = -0.5 * (g * x_hat * inv_std * inv_std).sum(dims)
        return grad_x, grad_w, grad_b, grad_mean, grad_var, None, None

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, mean_dot, var_dot, _, __):
        x, weight, mean, var = ctx.saved_tensors
        x, x_dot = _batch_of(x, ctx.batched), _batch_of(x_dot, ctx.batched)
        dims = (0, *range(2, x.dim()))
        shape = _channel_shape(x)
        x_hat, inv_std = _batch_normalize(x, mean, var, ctx.eps)
        if mean is None:
            x_hat_dot = None if x_dot is None else _normalized_tangent(x_dot, x_hat, inv_std, dims)
        else:
            centred_dot = tangent_sum(x_dot, None if mean_dot is None else -mean_dot.reshape(shape))
            x_hat_dot = tangent_sum(
                None if centred_dot is None else centred_dot * inv_std,
                None if var_dot is None else -0.5 * x_hat * inv_std * inv_std * var_dot.reshape(shape),
            )
        return _channel_affine_tangent(ctx, x_hat, x_hat_dot, weight, weight_dot, bias_dot)


@function
class LayerNormFunction(torch.autograd.Function):
    """Layer normalisation over the trailing dims D = normalized_shape.

    x, y: (*, D)   γ: D or None   β: D or None;   statistics per leading index over R = D:
        μ = mean_R x,  v = mean_R (x - μ)² (biased),  x̂ = (x - μ)/σ,  σ = √(v + ε),  y = γ x̂ + β
    With g = dL/dx̂ = γ · dL/dy (g = dL/dy without γ):

        dL/dx = (1/σ) (g - mean_R g - x̂ · mean_R (g · x̂))
        dL/dγ = Σ_* dL/dy · x̂          dL/dβ = Σ_* dL/dy          (sums over the leading dims)

    Forward mode (tangents ẋ, γ̇, β̇; an absent one is zero), the statistics' tangents included:
        ẏ = (γ/σ) (ẋ - mean_R ẋ - x̂ · mean_R (ẋ · x̂)) + γ̇ x̂ + β̇
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, normalized_shape, weight, bias, eps):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, normalized_shape, weight, bias, eps = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.num_normalized = len(normalized_shape)
        ctx.eps = eps
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None, None
        x, weight = ctx.saved_tensors
        lead = x.dim() - ctx.num_normalized
        dims = tuple(range(lead, x.dim()))
        x_hat, inv_std = _layer_normalize(x, dims, ctx.eps)
        g = grad_out if weight is None else grad_out * weight

        grad_x = _normalized_grad(g, x_hat, inv_std, dims) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        needs = (weight is not None and ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3])
        if REDUCTION.mode is not None and any(needs):  # per-sample gradients or clipping (manualbp.per_sample)
            terms = AffineTerms(grad_out, x_hat, tuple(range(lead)), needs, _affine_ordinals(weight), leading=True)
            grad_w, grad_b = REDUCTION.mode.reduce(ctx, terms)
        elif any(needs):
            grad_w, grad_b = affine_reduction(grad_out, x_hat, tuple(range(lead)), *needs)
        return grad_x, None, grad_w, grad_b, None

    @staticmethod
    def jvp(ctx, x_dot, _, weight_dot, bias_dot, __):
        x, weight = ctx.saved_tensors
        dims = tuple(range(x.dim() - ctx.num_normalized, x.dim()))
        x_hat, inv_std = _layer_normalize(x, dims, ctx.eps)
        x_hat_dot = None if x_dot is None else _normalized_tangent(x_dot, x_hat, inv_std, dims)
        return _affine_tangent(x_hat, x_hat_dot, weight, weight_dot, bias_dot)


@function
class RMSNormFunction(torch.autograd.Function):
    """Root-mean-square normalisation over the trailing dims D = normalized_shape (layer norm without centring).

    x, y: (*, D)   γ: D or None;   one statistic per leading index over R = D:
        rms = √(mean_R x² + ε),  x̂ = x / rms,  y = γ x̂
    With g = dL/dx̂ = γ · dL/dy (g = dL/dy without γ):

        dL/dx = (1/rms) (g - x̂ · mean_R (g · x̂))
        dL/dγ = Σ_* dL/dy · x̂          (summed over the leading dims)

    (from ∂rms/∂x = x̂ / (n rms), n = |R|: the only term beside g/rms is x's share of the statistic.)
    Forward mode (tangents ẋ, γ̇; an absent one is zero), the statistic's tangent included:
        ẏ = (γ/rms) (ẋ - x̂ · mean_R (ẋ · x̂)) + γ̇ x̂
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, normalized_shape, weight, eps):
        return F.rms_norm(x, normalized_shape, weight, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, normalized_shape, weight, eps = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.num_normalized = len(normalized_shape)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None
        x, weight = ctx.saved_tensors
        lead = x.dim() - ctx.num_normalized
        dims = tuple(range(lead, x.dim()))
        x_hat, inv_rms = _layer_normalize(x, dims, ctx.eps, centre=False)
        g = grad_out if weight is None else grad_out * weight

        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (g - x_hat * (g * x_hat).mean(dims, keepdim=True)) * inv_rms  # in g's layout, as torch's
        needs = (weight is not None and ctx.needs_input_grad[2], False)  # y = γ x̂ + β with no β
        if REDUCTION.mode is not None and needs[0]:  # per-sample gradients or clipping (manualbp.per_sample)
            terms = AffineTerms(grad_out, x_hat, tuple(range(lead)), needs, _affine_ordinals(weight), leading=True)
            grad_w, _ = REDUCTION.mode.reduce(ctx, terms)
        elif needs[0]:
            grad_w, _ = affine_reduction(grad_out, x_hat, tuple(range(lead)), *needs)
        return grad_x, None, grad_w, None

    @staticmethod
    def jvp(ctx, x_dot, _, weight_dot, __):
        x, weight = ctx.saved_tensors
        dims = tuple(range(x.dim() - ctx.num_normalized, x.dim()))
        x_hat, inv_rms = _layer_normalize(x, dims, ctx.eps, centre=False)
        x_hat_dot = None if x_dot is None else _normalized_tangent(x_dot, x_hat, inv_rms, dims, centre=False)
        return _affine_tangent(x_hat, x_hat_dot, weight, weight_dot, None)


@function
class ChannelNormFunction(torch.autograd.Function):
    """Normalisation of x: (N, C, *) per sample, with a per-channel affine map: group norm (instance norm is
    G = C) and the channels-first layer norm (torchvision's ``LayerNorm2d``).

    x, y: (N, C, *), or (C, *) with ``batched=False``   γ, β: (C,) or None;   one (μ, v) per sample n and set R:
        groups = G:     R = the C/G channels of one group × every spatial position       (group norm)
        groups = None:  R = the C channels at one spatial position                       (channels-first layer norm)
    μ = mean_R x,  v = mean_R (x - μ)² (biased),  x̂ = (x - μ)/σ,  σ = √(v + ε),  y = γ_c x̂ + β_c.
    With ĝ = γ ⊙ dL/dy (ĝ = dL/dy without γ), the means over each position's R:

        dL/dx = (1/σ) (ĝ - mean_R ĝ - x̂ · mean_R (ĝ ⊙ x̂))
        dL/dγ = Σ_{N,*} dL/dy ⊙ x̂      dL/dβ = Σ_{N,*} dL/dy       (per sample n: the same sums over * alone)

    Forward mode (tangents ẋ, γ̇, β̇; an absent one is zero), the statistics' tangents included:
        ẏ = (γ/σ) (ẋ - mean_R ẋ - x̂ · mean_R (ẋ · x̂)) + γ̇ x̂ + β̇
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, groups, weight, bias, eps, batched):
        x = _batch_of(x, batched)
        if groups is not None:
            y = F.group_norm(x, groups, weight, bias, eps)
        else:
            y, _ = _layer_normalize(x, (1,), eps)
            y = y if weight is None else y * weight.reshape(_channel_shape(x))
            y = y if bias is None else y + bias.reshape(_channel_shape(x))
        return y if batched else y.squeeze(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, groups, weight, bias, eps, batched = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.groups = groups
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.batched = batched

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None, None, None
        x, weight = ctx.saved_tensors
        x, grad_out = _batch_of(x, ctx.batched), _batch_of(grad_out, ctx.batched)
        needs = (weight is not None and ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3])
        if ctx.groups is not None and x.is_contiguous() and x.numel() > 0 and scratch_writable():
            grad_x, grad_w, grad_b = _group_norm_first_backward(ctx, grad_out, x, weight, needs)
        else:
            dims = _statistics_dims(x, ctx.groups)
            x_hat, inv_std = _layer_normalize(_grouped(x, ctx.groups), dims, ctx.eps)
            grad_x = None
            if ctx.needs_input_grad[0]:
                g = grad_out if weight is None else grad_out * weight.reshape(_channel_shape(x))
                grad_x = _normalized_grad(_grouped(g, ctx.groups), x_hat, inv_std, dims).reshape(x.shape)
            grad_w, grad_b = _channel_affine_grads(ctx, grad_out, x_hat.reshape(x.shape), weight, needs)
        if grad_x is not None and not ctx.batched:
            grad_x = grad_x.squeeze(0)
        return grad_x, None, grad_w, grad_b, None, None

    @staticmethod
    def jvp(ctx, x_dot, _, weight_dot, bias_dot, __, ___):
        x, weight = ctx.saved_tensors
        x, x_dot = _batch_of(x, ctx.batched), _batch_of(x_dot, ctx.batched)
        dims = _statistics_dims(x, ctx.groups)
        x_hat, inv_std = _layer_normalize(_grouped(x, ctx.groups), dims, ctx.eps)
        x_hat_dot = None
        if x_dot is not None:
            x_hat_dot = _normalized_tangent(_grouped(x_dot, ctx.groups), x_hat, inv_std, dims).reshape(x.shape)
        return _channel_affine_tangent(ctx, x_hat.reshape(x.shape), x_hat_dot, weight, weight_dot, bias_dot)


def _batch_of(t: Any, batched: bool) -> Any:
    """``t`` (a tensor, or None) as a batch: itself when ``batched``, else a batch of this one sample."""
    return t if batched or t is None else t.unsqueeze(0)


def _channel_affine_grads(
    ctx: Any, grad_out: torch.Tensor, x_hat: torch.Tensor, weight: torch.Tensor | None, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, ...]:
    """(dL/dγ, dL/dβ) of y = γ_c x̂ + β_c (None where not asked for), x̂ and dL/dy: (N, C, *): Σ dL/dy ⊙ x̂ and
    Σ dL/dy over every dim but the channels', through the reduction seam (``AffineTerms``). An unbatched input's
    (a batch of one, ``ctx.batched`` False) are the terms of its (C, *) tensors, which have no batch dim."""
    if not any(needs):
        return None, None
    if ctx.batched:
        dims: tuple[int, ...] = (0, *range(2, x_hat.dim()))
    else:
        grad_out, x_hat, dims = grad_out.squeeze(0), x_hat.squeeze(0), tuple(range(1, x_hat.dim() - 1))
    if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
        return REDUCTION.mode.reduce(ctx, AffineTerms(grad_out, x_hat, dims, needs, _affine_ordinals(weight)))
    return affine_reduction(grad_out, x_hat, dims, *needs)


def _channel_affine_tangent(
    ctx: Any,
    x_hat: torch.Tensor,
    x_hat_dot: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_dot: torch.Tensor | None,
    bias_dot: torch.Tensor | None,
) -> torch.Tensor | None:
    """ẏ = γ dx̂ + γ̇ x̂ + β̇ for y = γ_c x̂ + β_c, x̂ and dx̂: (N, C, *), the vectors (C,); an unbatched input's
    (``ctx.batched`` False, a batch of one) of its own shape (C, *)."""
    shape = _channel_shape(x_hat)
    y_dot = _affine_tangent(
        x_hat,
        x_hat_dot,
        None if weight is None else weight.reshape(shape),
        None if weight_dot is None else weight_dot.reshape(shape),
        None if bias_dot is None else bias_dot.reshape(shape),
    )
    if y_dot is None or ctx.batched:
        return y_dot
    return y_dot.squeeze(0).contiguous()  # only β moved: not an expanded view, which forward AD refuses here


def _group_norm_first_backward(
    ctx: Any, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, ...]:
    """(dL/dx, dL/dγ, dL/dβ) of group norm (G = ``ctx.groups``), x batched, contiguous and not empty, in a first
    backward (no graph recorded) that allocates dL/dx alone: x̂ and 1/σ by torch's forward kernel
    (``native_group_norm`` without an affine map: x̂ = x/σ - μ/σ, rounded as torch's forward output is), dL/dγ and
    dL/dβ from it (``_channel_affine_grads``), then per sample n and group, over its m positions, with
    ĝ = γ ⊙ dL/dy, S₁ = Σ ĝ and S₂ = Σ ĝ ⊙ x̂ (from each channel's Σ dL/dy and Σ dL/dy ⊙ x̂, ``_dot_rows``):

        dL/dx = (1/σ) (ĝ - S₁/m - (S₂/m) x̂)          in place of x̂ (unless a per-sample reduction keeps it)

    A group of one value (m = 1) has x̂ = 0 whatever x: dL/dx = 0, exactly."""
    n, c = x.shape[:2]
    groups = ctx.groups
    x_hat, _, inv_std = torch.native_group_norm(x, None, None, n, c, x[0, 0].numel(), groups, ctx.eps)
    grad_w, grad_b = _channel_affine_grads(ctx, grad_out, x_hat, weight, needs)
    if not ctx.needs_input_grad[0]:
        return None, grad_w, grad_b
    m = x_hat[0].numel() // groups
    if m == 1:
        return torch.zeros_like(x), grad_w, grad_b
    channels = (n, c, -1)  # one row per sample and channel: its spatial positions
    dy, x_hat_rows = grad_out.contiguous().view(channels), x_hat.view(channels)
    sum_dy, sum_dy_x_hat = dy.sum(-1, keepdim=True), _dot_rows(dy, x_hat_rows)
    if weight is not None:
        gamma = weight.reshape(1, c, 1)
        sum_dy, sum_dy_x_hat = sum_dy * gamma, sum_dy_x_hat * gamma
    per_group = (n, groups, -1)
    s1, s2 = sum_dy.view(per_group).sum(-1, keepdim=True), sum_dy_x_hat.view(per_group).sum(-1, keepdim=True)
    grad_x = x_hat if REDUCTION.mode is None else x_hat.clone()  # a per-sample reduction may read x̂ later
    grad_x = grad_x.view(per_group).mul_(-s2 / m).sub_(s1 / m).view(channels)
    grad_x = grad_x.add_(dy) if weight is None else grad_x.addcmul_(dy, weight.reshape(1, c, 1))
    return grad_x.view(per_group).mul_(inv_std.reshape(n, groups, 1)).view(x.shape), grad_w, grad_b


def _dot_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a ⊙ b over the last dim of two contiguous (N, R, m) tensors, kept as a size-1 dim: N·R dot products
    (``bmm``, outside autocast: in the tensors' dtype), which read each tensor once and write no product; tensors
    of two dtypes: the product summed, in the promoted dtype."""
    if a.dtype != b.dtype:
        return (a * b).sum(-1, keepdim=True)
    n, rows, m = a.shape
    with torch.autocast(a.device.type, enabled=False):
        return torch.bmm(a.reshape(n * rows, 1, m), b.reshape(n * rows, m, 1)).reshape(n, rows, 1)


def _grouped(t: torch.Tensor, groups: int | None) -> torch.Tensor:
    """(N, C, *) as ChannelNormFunction takes its statistics: a view (N, G, C/G, *) for ``groups`` = G, ``t``
    itself for None (the channels-first layer norm)."""
    return t if groups is None else t.unflatten(1, (groups, t.shape[1] // groups))


def _statistics_dims(x: torch.Tensor, groups: int | None) -> tuple[int, ...]:
    """The dims of ``_grouped(x, groups)`` one statistic is taken over: a group's channels and the spatial dims,
    or the channels alone (None)."""
    return (1,) if groups is None else tuple(range(2, x.dim() + 1))


def affine_reduction(grad_out, x_hat, dims, needs_weight, needs_bias):
    """dL/dγ = Σ dL/dy · x̂ and dL/dβ = Σ dL/dy over ``dims`` (None where not asked for), for y = γ x̂ + β."""
    per_channel = dims == (0, *range(2, x_hat.dim())) and x_hat.dim() > 2
    grad_w = None
    if needs_weight:
        grad_w = _channel_dot(grad_out, x_hat) if per_channel else _sum_over(grad_out * x_hat, dims)
    grad_b = _sum_over(grad_out, dims) if needs_bias else None
    return grad_w, grad_b


def _affine_ordinals(weight: torch.Tensor | None) -> tuple[int, int]:
    """Positions of γ and β among the Function's tensor inputs (x first; an absent γ is no input)."""
    return 1, 1 + (weight is not None)


class AffineTerms:
    """The reduction of y = γ x̂ + β (batch norm with fixed statistics, layer norm; RMS norm: γ alone, its β's
    ``needs`` False), for the reduction seam
    (``manualbp.functional._reduction.REDUCTION``). ``dims``: the dims the plain reduction sums over, the batch
    dim 0 among them when x has one; per sample the sum runs over the others:

        dL/dγ_n = Σ dL/dy_n · x̂_n        dL/dβ_n = Σ dL/dy_n        (sums over ``dims`` but the batch dim)

    tensors of the parameters' size per sample, so they are always materialised (N · C or N · prod(D) values).

    ``leading=True`` (layer norm, whose ``dims`` are the leading dims): an input with two or more of them has
    ``leading`` (their first two sizes) and ``time_major()``, the same terms with dim 1 as the batch.
    """

    def __init__(self, grad_out, x_hat, dims, needs, ordinals, leading: bool = False) -> None:
        self.grad_out, self.x_hat, self.dims, self.needs, self.ordinals = grad_out, x_hat, dims, needs, ordinals
        self.batched = 0 in dims
        self.batch = x_hat.shape[0] if self.batched else 1
        self.leading = tuple(x_hat.shape[:2]) if leading and len(dims) >= 2 else None

    def time_major(self) -> AffineTerms:
        terms = AffineTerms(self.grad_out.movedim(1, 0), self.x_hat.movedim(1, 0), self.dims, self.needs, self.ordinals)
        terms.leading = self.leading
        return terms

    def per_sample(self, scale=None, out=None):  # the parameters' size per sample: into new memory
        g = self.grad_out if scale is None else self.grad_out * scale
        return affine_reduction(g, self.x_hat, self.dims[1:], *self.needs)

    def sq_norms(self):
        self.kept = self.per_sample()
        return sum(g.square().flatten(1).sum(1) for g in self.kept if g is not None)

    def reduce(self, scale=None):
        g = self.grad_out if scale is None else self.grad_out * per_sample_factor(scale, self.grad_out)
        return affine_reduction(g, self.x_hat, self.dims, *self.needs)

    def weighted(self, scale):
        scale = scale.to(self.grad_out.dtype)
        return tuple(None if g is None else torch.tensordot(scale, g, dims=1) for g in self.kept)

    def total(self, samples, scale=None):
        factor = 1 if scale is None else 1 / scale
        return tuple(None if g is None else g.sum(0) * factor for g in samples)


def _batch_statistics_first_backward(
    ctx: Any, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx, dL/dγ, dL/dβ) of batch norm with batch statistics, x and dL/dy batched, in a first backward (no
    graph recorded, no per-sample reduction) that allocates dL/dx alone: x̂ and 1/σ by torch's forward kernel
    (``native_batch_norm`` without an affine map: x̂ = x/σ - μ/σ, rounded as torch's forward output is), the two
    sums per channel that every gradient reads, S₁ = Σ_R dL/dy and S₂ = Σ_R dL/dy ⊙ x̂ (``_channel_dot``), each
    taken once, and

        dL/dγ = S₂      dL/dβ = S₁      dL/dx = (γ/σ) (dL/dy - S₁/n - (S₂/n) x̂)      (n = |R|), in place of x̂"""
    x_hat, _, inv_std = torch.native_batch_norm(x, None, None, None, None, True, 0.0, ctx.eps)
    sum_dy = grad_out.sum((0, *range(2, x.dim())))
    sum_dy_x_hat = _channel_dot(grad_out, x_hat)
    grad_x = None
    if ctx.needs_input_grad[0]:
        shape, n = _channel_shape(x), x.numel() // x.shape[1]
        scale = inv_std if weight is None else weight * inv_std
        grad_x = x_hat.mul_((-sum_dy_x_hat / n).reshape(shape)).sub_((sum_dy / n).reshape(shape))
        grad_x = grad_x.add_(grad_out).mul_(scale.reshape(shape))
    needs_weight = weight is not None and ctx.needs_input_grad[1]
    return grad_x, sum_dy_x_hat if needs_weight else None, sum_dy if ctx.has_bias and ctx.needs_input_grad[2] else None


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a ⊙ b over every dim but the channels' (dim 1) of two (N, C, *) tensors: on contiguous ones as N·C dot
    products (``bmm``), which reads each once and writes no product (measured 1.5x faster than the product
    summed, (32, 64, 32, 32) float32); otherwise the product summed."""
    n, c = a.shape[:2]
    if a.is_contiguous() and b.is_contiguous() and a.dim() > 2:
        return _dot_rows(a.view(n, c, -1), b.view(n, c, -1)).reshape(n, c).sum(0)
    return (a * b).sum((0, *range(2, a.dim())))


def _batch_normalize(
    x: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, 1/σ) of batch norm, 1/σ shaped (1, C, 1, ...): batch statistics when ``mean`` is None."""
    if mean is None:
        var_c, mean_c = torch.var_mean(x, (0, *range(2, x.dim())), correction=0, keepdim=True)
    else:
        assert var is not None, "running_mean and running_var come together (batch_norm checks it)"
        shape = _channel_shape(x)
        mean_c, var_c = mean.reshape(shape), var.reshape(shape)
    inv_std = torch.rsqrt(var_c + eps)
    return (x - mean_c) * inv_std, inv_std


def _layer_normalize(
    x: torch.Tensor, dims: tuple[int, ...], eps: float, centre: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, 1/σ) with the statistics over ``dims`` (kept as size-1 dims): σ = √(v + ε) with v the variance and
    x̂ = (x - μ)/σ (layer norm), or without centring (``centre=False``, RMS norm) v = mean x² and x̂ = x/σ."""
    if not centre:
        inv_rms = torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
        return x * inv_rms, inv_rms
    trailing = dims == tuple(range(x.dim() - len(dims), x.dim()))
    if trailing and not torch.is_grad_enabled():  # a first backward: no graph of the statistics is needed
        x_hat, _, inv_std = torch.native_layer_norm(x, x.shape[x.dim() - len(dims) :], None, None, eps)
        return x_hat, inv_std
    # centred first, then the mean of squares: measured 2-5x faster than torch.var_mean on the CPU
    centred = x - x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
    return centred * inv_std, inv_std


def _normalized_grad(
    g: torch.Tensor, x_hat: torch.Tensor, inv_std: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """dL/dx = (1/σ) (g - mean g - x̂ · mean (g · x̂)) with the statistics taken over ``dims`` from x itself (g =
    dL/dx̂): out of place where a double backward records it or a torch.func transform runs it, else one new tensor updated in place (fewer passes
    over memory)."""
    if not scratch_writable():  # also under vmap, where addcmul_ has no batching rule
        return inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
    mean_g_x_hat = (g * x_hat).mean(dims, keepdim=True)
    return (g - g.mean(dims, keepdim=True)).addcmul_(x_hat, mean_g_x_hat, value=-1).mul_(inv_std)


def _normalized_tangent(
    x_dot: torch.Tensor, x_hat: torch.Tensor, inv_std: torch.Tensor, dims: tuple[int, ...], centre: bool = True
) -> torch.Tensor:
    """dx̂ with the statistics taken over ``dims`` from x itself: (1/σ) (ẋ - mean ẋ - x̂ mean(ẋ x̂)), without
    the mean ẋ term when x is not centred (``centre=False``, RMS norm)."""
    centred = x_dot - x_dot.mean(dims, keepdim=True) if centre else x_dot
    return inv_std * (centred - x_hat * (x_dot * x_hat).mean(dims, keepdim=True))


def _affine_tangent(
    x_hat: torch.Tensor,
    x_hat_dot: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_dot: torch.Tensor | None,
    bias_dot: torch.Tensor | None,
) -> torch.Tensor | None:
    """ẏ = γ dx̂ + γ̇ x̂ + β̇ for y = γ x̂ + β (γ, γ̇, β̇ shaped to broadcast against x̂), x̂'s shape."""
    y_dot = tangent_sum(
        None if x_hat_dot is None else x_hat_dot if weight is None else x_hat_dot * weight,
        None if weight_dot is None else x_hat * weight_dot,
        bias_dot,
    )
    if y_dot is not None and y_dot.shape != x_hat.shape:  # only β moved
        y_dot = y_dot.expand(x_hat.shape)
    return y_dot


def _check_channel_vectors(op: str, input: torch.Tensor, **vectors: torch.Tensor | None) -> None:
    """Raise InputError (a ValueError and a RuntimeError) unless every given vector has shape (C,), C = input.shape[1]."""
    channels = input.shape[1]
    for name, t in vectors.items():
        if t is not None and t.shape != (channels,):
            raise InputError(
                f"{op}: input of shape {shape_str(input)} has {channels} channels (dim 1), but {name} has shape "
                f"{shape_str(t)}; expected ({channels},)"
            )


def update_running_stats(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float | torch.Tensor,
    per_sample: bool = False,
) -> None:
    """In place, without grad: r ← (1 - momentum) r + momentum s, as torch's batch norm does in training.

    s is the per-channel batch mean for ``running_mean`` and the unbiased (n - 1) batch variance for
    ``running_var``; input: (N, C, *). ``per_sample`` (instance norm, as torch's): s is the mean over the N
    samples of each sample's per-channel mean, and unbiased variance, over the spatial dims.
    """
    with torch.no_grad():
        spatial = tuple(range(2, input.dim()))
        # detach: no_grad does not stop forward-mode AD, and the estimates must not pick up a tangent
        if per_sample:
            var, mean = (s.mean(0) for s in torch.var_mean(input.detach(), spatial, correction=1))
        else:
            var, mean = torch.var_mean(input.detach(), (0, *spatial), correction=1)
        running_mean.mul_(1 - momentum).add_(mean * momentum)
        running_var.mul_(1 - momentum).add_(var * momentum)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | torch.Tensor = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.batch_norm`` (same arguments and behaviour).

    input: (N, C, *)   running_mean, running_var, weight, bias: (C,) or None.
    ``training=True`` normalises with the batch statistics and, when running estimates are given,
    updates them in place with ``momentum``; ``training=False`` normalises with the running estimates.
    """
    op = "batch_norm"
    _check_channel_norm(op, input, eps, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if (running_mean is None) != (running_var is None):
        raise InputError(f"{op}: running_mean and running_var must be given together (or both be None)")
    check_unit_interval(op, "momentum", momentum)
    if training:
        if eps == 0:  # as torch: the variance of a constant channel would divide by zero
            raise InputError(f"{op}: eps must be positive during training, got {eps}")
        values_per_channel = input.numel() // input.shape[1] if input.shape[1] else 0
        if values_per_channel == 1:
            raise InputError(
                f"{op}: expected more than 1 value per channel when training, got input of shape {shape_str(input)}"
            )
        if running_mean is not None and running_var is not None:  # given together (checked above)
            update_running_stats(input, running_mean, running_var, momentum)
        running_mean = running_var = None
    elif running_mean is None:
        raise InputError(f"{op}: running_mean and running_var must be given in evaluation mode (training=False)")
    input_dtype = input.dtype
    input, weight, bias, running_mean, running_var = autocast_inputs(op, input, weight, bias, running_mean, running_var)
    output = apply(BatchNormFunction, input, weight, bias, running_mean, running_var, float(eps), True)
    return autocast_output(op, output, input_dtype)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.group_norm``: the C channels in ``num_groups`` groups G of C/G
    consecutive channels, one mean and variance per sample and group over its channels and spatial positions,
    then y = weight_c x̂ + bias_c (backward in ``ChannelNormFunction``).

    input: (N, C, *)   weight, bias: (C,) or None;   C divisible by ``num_groups``.
    """
    op = "group_norm"
    _check_channel_norm(op, input, eps, weight=weight, bias=bias)
    check_int(op, "num_groups", num_groups, 1)
    channels = input.shape[1]
    if channels % num_groups:
        raise InputError(
            f"{op}: expected the number of channels of input of shape {shape_str(input)} ({channels}) to be "
            f"divisible by num_groups, got num_groups={num_groups}"
        )
    if input.numel() // num_groups == 1:  # as torch: N · C/G · spatial values, one value in all
        raise InputError(
            f"{op}: expected more than 1 value per group when training, got input of shape {shape_str(input)}"
        )
    input_dtype = input.dtype
    # torch's group_norm is on the lists layer_norm is on (CUDA: float32; CPU: none, the input's dtype)
    input, weight, bias = autocast_inputs("layer_norm", input, weight, bias)
    output = apply(ChannelNormFunction, input, int(num_groups), weight, bias, float(eps), True)
    return autocast_output("layer_norm", output, input_dtype)


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float | torch.Tensor = 0.1,
    eps: float = 1e-5,
    *,
    batched: bool = True,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.instance_norm`` (same arguments and behaviour).

    input: (N, C, *), or one sample (C, *) with ``batched=False`` (manualbp's addition, for the unbatched inputs
    torch's InstanceNorm layers take; torch's functional reads dim 0 as the batch)
    running_mean, running_var, weight, bias: (C,) or None.
    ``use_input_stats=True``: one mean and variance per sample and channel over the spatial dims (group norm with
    G = C, ``ChannelNormFunction``); running estimates, when given, are updated in place as torch does, with the
    samples' statistics averaged over the batch. ``use_input_stats=False``: the running estimates normalise, an
    affine map per channel (``BatchNormFunction`` with fixed statistics).
    """
    op = "instance_norm"
    batch = input if batched else input.unsqueeze(0)  # what the checks and the running estimates read
    _check_channel_norm(op, batch, eps, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if (running_mean is None) != (running_var is None):
        raise InputError(f"{op}: running_mean and running_var must be given together (or both be None)")
    check_unit_interval(op, "momentum", momentum)
    input_dtype = input.dtype
    if use_input_stats:
        if batch.shape[2:].numel() == 1:  # as torch: x̂ = 0 whatever x
            raise InputError(
                f"{op}: expected more than 1 spatial element when training, got input of shape {shape_str(input)}"
            )
        if running_mean is not None and running_var is not None:  # given together (checked above)
            update_running_stats(batch, running_mean, running_var, momentum, per_sample=True)
        # torch's instance_norm runs batch_norm, on batch_norm's autocast lists (none: the input's dtype)
        input, weight, bias = autocast_inputs("batch_norm", input, weight, bias)
        output = apply(ChannelNormFunction, input, batch.shape[1], weight, bias, float(eps), batched)
    elif running_mean is None:
        raise InputError(f"{op}: running_mean and running_var must be given when use_input_stats=False")
    else:
        input, weight, bias, running_mean, running_var = autocast_inputs(
            "batch_norm", input, weight, bias, running_mean, running_var
        )
        output = apply(BatchNormFunction, input, weight, bias, running_mean, running_var, float(eps), batched)
    return autocast_output("batch_norm", output, input_dtype)


def channels_first_layer_norm(
    input: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Layer norm over the channel dim 1 of a channels-first input, without permuting it: one mean and variance
    per sample and spatial position over the C channels, then y = weight_c x̂ + bias_c (torchvision's
    ``LayerNorm2d``: ``layer_norm`` of x permuted to (N, *, C); backward in ``ChannelNormFunction``).

    input: (N, C, *)   weight, bias: (C,) or None.
    """
    op = "channels_first_layer_norm"
    _check_channel_norm(op, input, eps, weight=weight, bias=bias)
    input_dtype = input.dtype
    # torchvision's LayerNorm2d computes with layer_norm, so under autocast as layer_norm does
    input, weight, bias = autocast_inputs("layer_norm", input, weight, bias)
    output = apply(ChannelNormFunction, input, None, weight, bias, float(eps), True)
    return autocast_output("layer_norm", output, input_dtype)


def _check_channel_norm(op: str, input: torch.Tensor, eps: float, **tensors: torch.Tensor | None) -> None:
    """The checks group_norm, instance_norm and channels_first_layer_norm share: floating tensors of one dtype
    and device, an input (N, C, *), vectors (C,) beside it, eps >= 0."""
    check_floating(op, error=DtypeError, input=input, **tensors)
    check_same_dtype(op, error=DtypeError, input=input, **tensors)
    check_same_device(op, input=input, **tensors)
    check_dim(op, "input", input, range(2, 1 << 30))
    _check_channel_vectors(op, input, **tensors)
    check_non_negative(op, "eps", eps)


def normalized_shape_tuple(op: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """layer_norm's ``normalized_shape`` (an int, or a sequence of ints such as a torch.Size) as a checked
    tuple of one or more sizes >= 0; shared with the LayerNorm layer's constructor."""
    shape: tuple[int, ...]
    if is_int(normalized_shape):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list)) and all(is_int(s) for s in normalized_shape):
        shape = tuple(int(s) for s in normalized_shape)
    else:
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    if not shape:
        raise InputError(f"{op}: normalized_shape must name at least one dimension, got {shape}")
    if min(shape) < 0:
        raise InputError(f"{op}: normalized_shape must hold sizes >= 0, got {shape}")
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
    shape = _check_normalized(op, input, normalized_shape, eps, weight=weight, bias=bias)
    input_dtype = input.dtype
    input, weight, bias = autocast_inputs(op, input, weight, bias)
    return autocast_output(op, apply(LayerNormFunction, input, shape, weight, bias, float(eps)), input_dtype)


def rms_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.rms_norm`` over the trailing ``normalized_shape`` dims:
    y = weight · x / √(mean x² + eps).

    input: (*, *normalized_shape)   weight: normalized_shape or None.   ``eps=None``: as torch, the machine
    epsilon of the dtype the statistic is computed in (float32 for a float16 or bfloat16 input, float64's for
    float64). Under CPU autocast it runs in the widest dtype of its inputs (it is on no list there) and returns the
    input's dtype, under CUDA autocast in float32, as torch's ``rms_norm``.
    """
    op = "rms_norm"
    shape = _check_normalized(op, input, normalized_shape, eps, weight=weight)
    if eps is None:
        eps = torch.finfo(torch.promote_types(input.dtype, torch.float32)).eps
    input_dtype = input.dtype
    input, weight = autocast_inputs(op, input, weight)
    return autocast_output(op, apply(RMSNormFunction, input, shape, weight, float(eps)), input_dtype)


def _check_normalized(
    op: str,
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    eps: float | None,
    **params: torch.Tensor | None,
) -> tuple[int, ...]:
    """The checks layer_norm and rms_norm share: floating tensors of one dtype and device, eps >= 0 (or None),
    an input that ends in ``normalized_shape``, parameters (weight, bias) of that shape; returns
    ``normalized_shape`` as a tuple."""
    check_floating(op, error=DtypeError, input=input, **params)
    check_same_dtype(op, error=DtypeError, input=input, **params)
    check_same_device(op, input=input, **params)
    if eps is not None:
        check_non_negative(op, "eps", eps)
    shape = normalized_shape_tuple(op, normalized_shape)
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape) :]) != shape:
        raise InputError(
            f"{op}: input of shape {shape_str(input)} does not end in normalized_shape {shape}: "
            f"expected input of shape (*, {', '.join(map(str, shape))})"
        )
    for name, t in params.items():
        if t is not None and tuple(t.shape) != shape:
            raise InputError(f"{op}: {name} of shape {shape_str(t)} does not match normalized_shape {shape}")
    return shape
