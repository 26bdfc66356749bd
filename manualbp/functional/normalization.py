"""Batch, layer and RMS normalisation with hand-written backward passes.

All three normalise x to x̂ = (x - μ) / σ, σ = √(v + ε), and apply an optional affine map y = γ x̂ + β.
They differ in the set R of positions a statistic is taken over:

    batch_norm:  one (μ, v) per channel c, over R = N and every spatial dim       x: (N, C, *)
    layer_norm:  one (μ, v) per leading index, over R = the trailing normalized dims
    rms_norm:    as layer_norm, but not centred: μ = 0, v = mean_R x² (the mean square), and no β

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

The running estimates of batch norm are updated outside the Functions, under ``no_grad``, exactly as
torch does: r ← (1 - m) r + m s, with s the batch mean and the unbiased batch variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from manualbp.functional._autocast import autocast_inputs, autocast_output
from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION, per_sample_factor
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    DtypeError,
    InputError,
    check_dim,
    check_floating,
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
    def forward(x, weight, bias, mean, var, eps):
        return F.batch_norm(x, mean, var, weight, bias, training=mean is None, momentum=0.0, eps=eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mean, var, eps = inputs
        ctx.save_for_backward(x, weight, mean, var)
        ctx.save_for_forward(x, weight, mean, var)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.eps = eps
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None, None, None
        x, weight, mean, var = ctx.saved_tensors
        dims = (0, *range(2, x.dim()))
        shape = _channel_shape(x)
        batch_stats = mean is None
        if batch_stats and REDUCTION.mode is not None:  # per-sample gradients: batch statistics mix the samples
            REDUCTION.mode.refuse(ctx, _affine_ordinals(weight), "batch_norm with batch statistics (training mode)")
        x_hat, inv_std = _batch_normalize(x, mean, var, ctx.eps)
        g = grad_out if weight is None else grad_out * weight.reshape(shape)

        grad_x = grad_w = grad_b = grad_mean = grad_var = None
        if ctx.needs_input_grad[0]:
            if batch_stats:
                grad_x = inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
            else:
                grad_x = g * inv_std
        needs = (weight is not None and ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        if REDUCTION.mode is not None and any(needs):  # per-sample gradients or clipping (manualbp.per_sample)
            terms = AffineTerms(grad_out, x_hat, dims, needs, _affine_ordinals(weight))
            grad_w, grad_b = REDUCTION.mode.reduce(ctx, terms)
        elif any(needs):
            grad_w, grad_b = affine_reduction(grad_out, x_hat, dims, *needs)
        if not batch_stats and ctx.needs_input_grad[3]:
            grad_mean = -(g * inv_std).sum(dims)
        if not batch_stats and ctx.needs_input_grad[4]:
            grad_var = -0.5 * (g * x_hat * inv_std * inv_std).sum(dims)
        return grad_x, grad_w, grad_b, grad_mean, grad_var, None

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, mean_dot, var_dot, _):
        x, weight, mean, var = ctx.saved_tensors
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
        return _affine_tangent(
            x_hat,
            x_hat_dot,
            None if weight is None else weight.reshape(shape),
            None if weight_dot is None else weight_dot.reshape(shape),
            None if bias_dot is None else bias_dot.reshape(shape),
        )


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

        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():  # a double backward records this: out of place
            grad_x = inv_std * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
        elif ctx.needs_input_grad[0]:  # the same with one new tensor updated in place: fewer passes over memory
            mean_g_x_hat = (g * x_hat).mean(dims, keepdim=True)
            grad_x = (g - g.mean(dims, keepdim=True)).addcmul_(x_hat, mean_g_x_hat, value=-1).mul_(inv_std)
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


def affine_reduction(grad_out, x_hat, dims, needs_weight, needs_bias):
    """dL/dγ = Σ dL/dy · x̂ and dL/dβ = Σ dL/dy over ``dims`` (None where not asked for), for y = γ x̂ + β."""
    grad_w = _sum_over(grad_out * x_hat, dims) if needs_weight else None
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
    input: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float | torch.Tensor
) -> None:
    """In place, without grad: r ← (1 - momentum) r + momentum s, as torch's batch norm does in training.

    s is the per-channel batch mean for ``running_mean`` and the unbiased (n - 1) batch variance for
    ``running_var``; input: (N, C, *).
    """
    with torch.no_grad():
        dims = (0, *range(2, input.dim()))
        # detach: no_grad does not stop forward-mode AD, and the estimates must not pick up a tangent
        var, mean = torch.var_mean(input.detach(), dims, correction=1)
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
    check_floating(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_same_dtype(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_same_device(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_dim(op, "input", input, range(2, 1 << 30))
    _check_channel_vectors(op, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if (running_mean is None) != (running_var is None):
        raise InputError(f"{op}: running_mean and running_var must be given together (or both be None)")
    check_non_negative(op, "eps", eps)
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
    output = apply(BatchNormFunction, input, weight, bias, running_mean, running_var, float(eps))
    return autocast_output(op, output, input_dtype)


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
