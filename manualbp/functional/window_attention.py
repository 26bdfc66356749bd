"""The two parameters of windowed attention that are not a projection's weight (Swin, MaxViT), with hand-written
backward passes whose per-sample gradients go through the reduction seam (``manualbp.functional._reduction``).

**Relative position bias.** A table B̂ (T, H) holds one learned bias per relative offset and head; a buffer of
indices idx (L, S) says which offset query i and key j of a window are apart. The bias added to the attention
logits of every window and sample is c · B̂[idx_ij, h] (c: 16 for Swin V2's 16·sigmoid table, else 1), plus a
constant per-window mask M (Swin's shifted windows: -100 between tokens of different regions):

    y[n, w, h, i, j] = c · B̂[idx_ij, h] + M[w, i, j]           y: (1, W, H, L, S), broadcast over the samples

For per-sample gradients (``manualbp.per_sample``) the output is expanded over the N samples instead (a view,
stride 0), so that the attention's own backward gives each sample's gradient of it
(``manualbp.functional.scaled_dot_product_attention`` sums dL/dM over a mask's broadcast dims only). Otherwise it
is not: an expanded view has no forward-mode tangent of its layout (torch's forward AD refuses it). The lookup is
linear in B̂; its backward scatters the gradient back to the rows it was read from:

    dL/dB̂[t, h] = c · Σ_{n, w} Σ_{ij: idx_ij = t} dL/dy[n, w, h, i, j]          dL/dB̂_n: the same without Σ_n

**Exponential scale.** Swin V2 scales its cosine attention logits by s = exp(min(τ, τ_max)) per head
(τ = ``logit_scale``, τ_max = log 100). Applied to the normalised queries (q̂ k̂ᵀ s = (s q̂) k̂ᵀ):

    y = x · s,  s = exp(min(τ, τ_max))      dL/dx = dL/dy · s      dL/dτ = Σ dL/dy ⊙ x · s · [τ ≤ τ_max]

summed over the batch and the dims τ is broadcast along (per sample: over the latter alone).
"""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError, check_floating, check_real, check_same_device, shape_str
from manualbp.functional.tokens import _parameter_grad


def _gather(table: torch.Tensor, index: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · table[..., index, :] laid out as (B, 1, H, L, S), a new tensor: table (T, H) (B = 1) or (B, T, H),
    index (L, S)."""
    rows = table if table.dim() == 3 else table.unsqueeze(0)
    picked = rows[:, index.reshape(-1)] * scale  # (B, L·S, H)
    return picked.transpose(1, 2).reshape(rows.shape[0], 1, rows.shape[2], *index.shape).contiguous()


@function
class RelativePositionBiasFunction(torch.autograd.Function):
    """y = c · B̂[idx] (as (H, L, S)) + M, expanded to (N, W, H, L, S).

    table B̂: (T, H), or (N, T, H) one per sample   index idx: (L, S) integers in [0, T)   mask M: (W, L, S)
    constant, or None (W = 1)   c: a number

        dL/dB̂ = c · scatter_add_idx(Σ_{n, w} dL/dy)        (H, L, S) -> (T, H): entry (h, i, j) into row idx_ij
        dL/dB̂_n = c · scatter_add_idx(Σ_w dL/dy_n)         (each sample's own, through the reduction seam; a
                                                           table per sample gets these as its gradient)

    Forward mode: ẏ = c · Ḃ̂[idx], expanded as y.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(table, index, mask, batch, scale):
        bias = _gather(table, index, scale)  # (1 or N, 1, H, L, S)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)
        return bias if bias.shape[0] == batch else bias.expand(batch, *bias.shape[1:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        table, index, _, _, scale = inputs
        ctx.save_for_backward(index)
        ctx.save_for_forward(index)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.table_shape, ctx.scale, ctx.out_shape = table.shape, scale, output.shape

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None or not ctx.needs_input_grad[0]:
            return (None,) * 5
        (index,) = ctx.saved_tensors
        rows, heads = ctx.table_shape[-2:]

        def take(g):  # (N, T, H): each sample's gradient of the table
            per_offset = g.sum(1).flatten(2).transpose(1, 2) * ctx.scale  # (N, L·S, H)
            return per_offset.new_zeros(g.shape[0], rows, heads).index_add(1, index.reshape(-1), per_offset)

        grad = take(grad_out) if len(ctx.table_shape) == 3 else _parameter_grad(ctx, grad_out, take, ordinal=0)
        return grad, None, None, None, None

    @staticmethod
    def jvp(ctx, table_dot, _index, _mask, _batch, _scale):
        if table_dot is None:
            return None
        (index,) = ctx.saved_tensors
        tangent = _gather(table_dot, index, ctx.scale)
        # laid out as y: its own values per window where a mask gives each window its own, shared by the samples
        # (stride 0) where the table is
        windows = tangent.expand(tangent.shape[0], ctx.out_shape[1], *tangent.shape[2:]).contiguous()
        return windows if windows.shape[0] == ctx.out_shape[0] else windows.expand(ctx.out_shape)


@function
class QueryValueBiasFunction(torch.autograd.Function):
    """y = x + [b_q ; 0 ; b_v]: a packed qkv projection's bias without the keys' third (Swin V2's).

    x: (N, *, 3C)   b: (3C,), its middle third unused   y: x's shape

        dL/dx = dL/dy        dL/db = [Σ dL/dy_q ; 0 ; Σ dL/dy_v]   (over the batch and the positions)
        dL/db_n = the same sums over sample n's positions alone
        ẏ = ẋ + [ḃ_q ; 0 ; ḃ_v]
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, bias):
        return x + _without_keys(bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.shape = output.shape

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None

        def take(g):  # (N, 3C): each sample's sums over its positions, the keys' third zero
            return _without_keys(g.reshape(g.shape[0], -1, g.shape[-1]).sum(1))

        return (grad_out if ctx.needs_input_grad[0] else None), _parameter_grad(ctx, grad_out, take)

    @staticmethod
    def jvp(ctx, x_dot, bias_dot):
        if bias_dot is None:
            return x_dot
        bias_dot = _without_keys(bias_dot)
        return bias_dot.expand(ctx.shape) if x_dot is None else x_dot + bias_dot


def _without_keys(t: torch.Tensor) -> torch.Tensor:
    """``t`` (…, 3C) with its middle third (the keys') zero."""
    q, _, v = t.chunk(3, dim=-1)
    return torch.cat((q, torch.zeros_like(q), v), dim=-1)


@function
class ExpScaleFunction(torch.autograd.Function):
    """y = x · exp(min(τ, τ_max)).   x: (N, *)   τ: broadcastable to x's dims after the batch   y: x's shape

    With s = exp(min(τ, τ_max)) and s' = s · [τ ≤ τ_max] (ds/dτ):

        dL/dx = dL/dy · s        dL/dτ = Σ dL/dy ⊙ x · s'   (over the batch and τ's broadcast dims)
        dL/dτ_n = Σ dL/dy_n ⊙ x_n · s'                     (each sample's own, through the reduction seam)
        ẏ = ẋ · s + x · τ̇ · s'
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, log_scale, max_log_scale):
        return x * log_scale.clamp(max=max_log_scale).exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, log_scale, max_log_scale = inputs
        ctx.save_for_backward(x, log_scale)
        ctx.save_for_forward(x, log_scale)
        ctx.set_materialize_grads(False)
        ctx.max_log_scale = max_log_scale

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None
        x, log_scale = ctx.saved_tensors
        scale, slope = _scale_and_slope(log_scale, ctx.max_log_scale)
        shape = log_scale.shape

        def take(g):  # (N, *τ.shape): sample n's Σ dL/dy ⊙ x over τ's broadcast dims, times s'
            aligned = (1,) * (g.dim() - len(shape)) + tuple(shape)
            return (g * x).sum_to_size(g.shape[0], *aligned[1:]).reshape(g.shape[0], *shape) * slope

        grad_x = grad_out * scale if ctx.needs_input_grad[0] else None
        return grad_x, _parameter_grad(ctx, grad_out, take), None

    @staticmethod
    def jvp(ctx, x_dot, log_scale_dot, _):
        x, log_scale = ctx.saved_tensors
        scale, slope = _scale_and_slope(log_scale, ctx.max_log_scale)
        return tangent_sum(
            None if x_dot is None else x_dot * scale,
            None if log_scale_dot is None else x * (log_scale_dot * slope),
        )


def _scale_and_slope(log_scale: torch.Tensor, max_log_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s = exp(min(τ, τ_max)) and ds/dτ = s · [τ ≤ τ_max] (torch's clamp passes the gradient at the bound)."""
    scale = log_scale.clamp(max=max_log_scale).exp()
    return scale, scale * (log_scale <= max_log_scale)


def relative_position_bias(
    table: torch.Tensor,
    index: torch.Tensor,
    batch: int,
    mask: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """The relative position bias of windowed attention, ``scale · table[index]`` per head plus a constant per-window
    ``mask``: the float ``attn_mask`` of ``manualbp.functional.scaled_dot_product_attention`` for queries
    (N, W, H, L, E).

    table: (T, H), or (batch, T, H) one per sample   index: (L, S) integers in [0, T)   mask: (W, L, S) or None
    ->   (batch, W or 1, H, L, S). ``batch``: 1 (broadcast over the samples), or N for each sample's gradient of the
    table under ``manualbp.per_sample`` (a shared table's bias is then expanded, a view). The table's gradient is
    ``scale`` times the scatter-add of the output's gradient into the rows the index read.
    """
    op = "relative_position_bias"
    check_floating(op, table=table)
    check_same_device(op, table=table, index=index, mask=mask)
    check_real(op, "scale", scale)
    per_sample = table.dim() == 3 and table.shape[0] == batch
    if (
        batch < 1
        or not (table.dim() == 2 or per_sample)
        or index.dim() != 2
        or index.dtype not in (torch.int64, torch.int32)
    ):
        raise InputError(
            f"{op}: expected a table (T, H) or ({batch}, T, H) and integer indices (L, S), got table of shape "
            f"{shape_str(table)} and index of shape {shape_str(index)} and dtype {index.dtype}"
        )
    if mask is not None:
        check_floating(op, mask=mask)
        if mask.dim() != 3 or mask.shape[1:] != index.shape:
            raise InputError(
                f"{op}: expected a mask (W, L, S) with the index's (L, S), got mask of shape {shape_str(mask)} and "
                f"index of shape {shape_str(index)}"
            )
    return apply(RelativePositionBiasFunction, table, index, mask, int(batch), float(scale))


def exp_scale(input: torch.Tensor, log_scale: torch.Tensor, max_log_scale: float) -> torch.Tensor:
    """``input * log_scale.clamp(max=max_log_scale).exp()`` with a hand-written backward (Swin V2's logit scale,
    applied to the normalised queries).

    input: (N, *), dim 0 the batch   log_scale: broadcastable to input's dims after the batch (Swin V2: (H, 1, 1)
    against queries (N, W, H, L, E))   ->   input's shape.
    """
    op = "exp_scale"
    check_floating(op, input=input, log_scale=log_scale)
    check_same_device(op, input=input, log_scale=log_scale)
    check_real(op, "max_log_scale", max_log_scale)
    lead = input.dim() - log_scale.dim()
    if lead < 1 or any(s not in (1, input.shape[lead + d]) for d, s in enumerate(log_scale.shape)):
        raise InputError(
            f"{op}: log_scale of shape {shape_str(log_scale)} does not broadcast to the dims after the batch of "
            f"input of shape {shape_str(input)}"
        )
    return apply(ExpScaleFunction, input, log_scale, float(max_log_scale))


def add_query_value_bias(input: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``input + bias`` with the middle third of ``bias`` (the keys') left out, with a hand-written backward: Swin
    V2's qkv projection, whose keys have no bias (its gradient there is zero).

    input: (N, *, 3C), dim 0 the batch   bias: (3C,)   ->   input's shape
    """
    op = "add_query_value_bias"
    check_floating(op, input=input, bias=bias)
    check_same_device(op, input=input, bias=bias)
    if input.dim() < 2 or bias.shape != (input.shape[-1],) or input.shape[-1] % 3:
        raise InputError(
            f"{op}: expected an input (N, *, 3C) and a bias (3C,), got input of shape {shape_str(input)} and bias "
            f"of shape {shape_str(bias)}"
        )
    return apply(QueryValueBiasFunction, input, bias)
