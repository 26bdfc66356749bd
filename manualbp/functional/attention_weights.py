"""The attention probabilities themselves, for the callers that return them (``MultiheadAttention`` with
``need_weights=True``), with a hand-written backward. The attention output never needs them:
``scaled_dot_product_attention`` recomputes them block by block in its backward instead of keeping them."""

from __future__ import annotations

import torch

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, function
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError


@function
class AttentionWeightsFunction(torch.autograd.Function):
    """P = softmax(s · Q Kᵀ + M) along the keys.

    Q: (*, L, E)   K: (*, S, E)   M: float, broadcastable to (*, L, S), or None   s: a number   P: (*, L, S)

    With dP = dL/dP and dS = P ⊙ (dP − rowsum(dP ⊙ P)) (the softmax's backward):

        dL/dQ = s · dS K          dL/dK = s · dSᵀ Q          dL/dM = dS, summed over M's broadcast dims

    Forward mode: Ṡ = s (Q̇ Kᵀ + Q K̇ᵀ) + Ṁ,   Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(query, key, mask, scale):
        scores = torch.matmul(query, key.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores + mask
        return torch.softmax(scores, dim=-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, mask, scale = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(query, key, output)
        ctx.save_for_forward(query, key, output)
        ctx.scale = scale
        ctx.mask_shape = None if mask is None else mask.shape

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None
        query, key, probs = ctx.saved_tensors
        grad_scores = probs * (grad_out - (grad_out * probs).sum(-1, keepdim=True))
        grad_q = grad_k = grad_mask = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.matmul(grad_scores, key) * ctx.scale
        if ctx.needs_input_grad[1]:
            grad_k = torch.matmul(grad_scores.transpose(-2, -1), query) * ctx.scale
        if ctx.needs_input_grad[2]:
            grad_mask = grad_scores.sum_to_size(ctx.mask_shape)
        return grad_q, grad_k, grad_mask, None

    @staticmethod
    def jvp(ctx, query_dot, key_dot, mask_dot, _):
        query, key, probs = ctx.saved_tensors
        scores_dot = tangent_sum(
            None if query_dot is None else torch.matmul(query_dot, key.transpose(-2, -1)) * ctx.scale,
            None if key_dot is None else torch.matmul(query, key_dot.transpose(-2, -1)) * ctx.scale,
            mask_dot,
        )
        if scores_dot is None:
            return None
        return probs * (scores_dot - (probs * scores_dot).sum(-1, keepdim=True))


def attention_weights(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """softmax(scale · query keyᵀ + mask) along the keys (``AttentionWeightsFunction``), the probabilities that
    ``scaled_dot_product_attention`` weights the values with. ``mask``: additive (float), or None; ``scale``
    None: 1/√E.

    query: (*, L, E)   key: (*, S, E)   ->   (*, L, S)
    """
    if mask is not None and not mask.is_floating_point():
        raise InputError(
            f"attention_weights: mask must be a float (additive) mask, got {mask.dtype}; for a boolean mask "
            "(True = takes part) give torch.zeros(mask.shape).masked_fill(~mask, float('-inf'))"
        )
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    query, key, mask = autocast_inputs("attention_weights", query, key, mask)
    return apply(AttentionWeightsFunction, query, key, mask, float(scale))
