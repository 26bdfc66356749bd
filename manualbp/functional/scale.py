"""Layer scale: y = γ ⊙ x with a learnable γ broadcast against x (ConvNeXt's per-channel ``layer_scale``, CaiT's).

    y = γ ⊙ x        dL/dx = γ ⊙ dL/dy        dL/dγ = Σ dL/dy ⊙ x   (over the dims γ is broadcast along)

The reduction goes through the seam (``manualbp.functional._reduction``) as ``AffineTerms``
(``manualbp.functional.normalization``): y is affine in γ with "x̂" = x, and a sample's gradient has γ's size, so
it is always materialised.
"""

from __future__ import annotations

import math

import torch

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError, check_floating, check_same_device, check_same_dtype, shape_str
from manualbp.functional.normalization import AffineTerms, affine_reduction


def _by_scale(t: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` (x's shape) as (N, *γ.shape, P), P the elements each γ entry multiplies in a sample (the dims γ is
    broadcast along moved last), and the dims γ's gradient sums over (N's and P's). x's dim 0 is the batch when
    γ has fewer dims than x; otherwise (1, *γ.shape, P), summed over P alone (``AffineTerms`` reads a batch dim
    only from a 0 among the dims)."""
    batched = scale.dim() < x.dim()
    full = (1,) * (x.dim() - scale.dim()) + tuple(scale.shape)
    spread = [d for d in range(int(batched), x.dim()) if full[d] == 1 and x.shape[d] != 1]
    moved = t.movedim(spread, tuple(range(x.dim() - len(spread), x.dim())))
    rows = x.shape[0] if batched else 1
    shaped = moved.reshape(rows, *scale.shape, math.prod([x.shape[d] for d in spread]))
    return shaped, ((0,) if batched else ()) + (shaped.dim() - 1,)


@function
class LayerScaleFunction(torch.autograd.Function):
    """y = γ ⊙ x.   x, y: any shape   γ: broadcastable to x's shape (ConvNeXt: x (N, C, H, W), γ (C, 1, 1)).

        dL/dx = γ ⊙ dL/dy
        dL/dγ = Σ dL/dy ⊙ x        (over the batch and every dim γ is broadcast along)
        ẏ = γ ⊙ ẋ + γ̇ ⊙ x

    Per-sample gradients and clipping (``REDUCTION.mode``), where γ has fewer dims than x (x's dim 0 the batch):
    dL/dγ_n = Σ dL/dy_n ⊙ x_n, through ``AffineTerms`` (a sample's gradient has γ's size).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale):
        return scale * x  # torch's CNBlock: layer_scale * block(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None
        x, scale = ctx.saved_tensors
        grad_x = grad_out * scale if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            g, dims = _by_scale(grad_out, x, scale)
            shaped_x, _ = _by_scale(x, x, scale)
            if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
                grad_scale, _ = REDUCTION.mode.reduce(ctx, AffineTerms(g, shaped_x, dims, (True, False), (1, 2)))
            else:
                grad_scale, _ = affine_reduction(g, shaped_x, dims, True, False)
        return grad_x, None if grad_scale is None else grad_scale.reshape(scale.shape)

    @staticmethod
    def jvp(ctx, x_dot, scale_dot):
        x, scale = ctx.saved_tensors
        return tangent_sum(
            None if x_dot is None else scale * x_dot,
            None if scale_dot is None else scale_dot * x,
        )


def layer_scale(input: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Hand-differentiated ``scale * input`` with a learnable ``scale`` γ: y = γ ⊙ x, of x's shape.

    input: any shape   scale: broadcastable to input's shape without enlarging it (ConvNeXt: (N, C, H, W) and
    (C, 1, 1)); input's dim 0 is the batch (for per-sample gradients) when scale has fewer dims. Under autocast
    both are taken in the wider of their dtypes, as torch's multiplication does.
    """
    op = "layer_scale"
    check_floating(op, input=input, scale=scale)
    check_same_dtype(op, input=input, scale=scale)
    check_same_device(op, input=input, scale=scale)
    lead = input.dim() - scale.dim()
    if lead < 0 or any(s not in (1, input.shape[lead + d]) for d, s in enumerate(scale.shape)):
        raise InputError(
            f"{op}: scale of shape {shape_str(scale)} does not broadcast to input of shape {shape_str(input)} "
            "(the output has the input's shape)"
        )
    input, scale = autocast_inputs(op, input, scale)
    return apply(LayerScaleFunction, input, scale)
