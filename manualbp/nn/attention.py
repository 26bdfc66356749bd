"""manualbp.nn.MultiheadAttention: torch.nn.MultiheadAttention with hand-written backward passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from manualbp import functional as MF
from manualbp.nn._composite import ManualComposite
from manualbp.rules.feedback import linear_feedback

if TYPE_CHECKING:
    from manualbp.rules.rule import Rule


class MultiheadAttention(ManualComposite, torch.nn.MultiheadAttention):
    """Multi-head attention as ``torch.nn.MultiheadAttention``: the same constructor arguments (``bias``,
    ``add_bias_kv``, ``add_zero_attn``, ``kdim``, ``vdim``, ``batch_first``, ``dropout``), parameter names
    (``in_proj_weight`` or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, ``in_proj_bias``,
    ``bias_k``/``bias_v``, ``out_proj.weight``/``out_proj.bias``), initialisation and forward arguments
    (``key_padding_mask``, ``need_weights``, ``attn_mask``, ``average_attn_weights``, ``is_causal``).

    query: (L, N, E) (``batch_first``: (N, L, E); unbatched: (L, E))   key: (S, N, kdim)   value: (S, N, vdim)

        Q = query W_qᵀ + b_q,  K = key W_kᵀ + b_k,  V = value W_vᵀ + b_v      (``manualbp.functional.linear``)
        head h: O_h = softmax(Q_h K_hᵀ / √d + M) V_h                       (``scaled_dot_product_attention``)
        y = [O_1 … O_H] W_oᵀ + b_o

    Every step is a manualbp Function: the projections are ``linear`` (their per-sample gradients and
    learning rules as any Linear's), attention is ``scaled_dot_product_attention`` (its backward recomputes
    the probabilities, never saved), ``bias_k``/``bias_v`` are appended by ``cat_token``; the reshapes between
    heads are views. ``need_weights=True`` (torch's default) also returns the probabilities, computed by
    ``attention_weights`` beside the output (averaged over the heads unless ``average_attn_weights=False``);
    in training with ``dropout`` > 0, the output's dropout mask is not applied to the weights returned.

    Cross-attention with the packed ``in_proj_weight`` (query not the same tensor as key and value) projects
    each input with the whole packed weight and keeps its third of the result, so the one parameter receives
    its gradient from manual linear maps only: correct, at up to three times the projections' work. With
    separate ``q/k/v_proj_weight`` (``kdim``/``vdim`` not ``embed_dim``), the packed ``in_proj_bias`` is added by
    ``add_packed_bias``.

    ``rule``: a learning rule (``manualbp.convert(model, rule=...)``, see ``manualbp.rules``) sends the error back
    through a matrix M_w in place of each input-projection weight (``feedback_weights``): dL/dquery = dL/dQ · M_q and
    so on (with the packed weight, one M of its (3E, E) shape, buffer ``in_proj_feedback_weight``); the weights'
    gradients are unchanged. ``out_proj`` is a manual Linear (``manualbp.nn.NonDynamicallyQuantizableLinear``) and
    takes the rule as every Linear does.
    torch's fast path for inference (``torch._native_multi_head_attention``) is never taken.
    """

    rule: Rule | None = None

    @property
    def feedback_weights(self) -> tuple[str, ...]:
        """The weights through which the error goes back to the inputs: ``in_proj_weight``, or the three
        ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``."""
        return ("in_proj_weight",) if self._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight", "v_proj_weight")

    def extra_repr(self) -> str:
        return "" if self.rule is None else f"rule={self.rule!r}"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # torch's own checks of the shapes, and whether the inputs are batched
        batched = F._mha_shape_check(  # type: ignore[attr-defined]  # private, absent from torch's stubs
            query, key, value, key_padding_mask, attn_mask, self.num_heads
        )
        batch_first = self.batch_first or not batched  # the layout the projections see: the inputs' own
        if not batched:  # a batch of one
            query, key, value = _unsqueezed(query, key, value)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        key_padding_mask = float_mask(key_padding_mask, "key_padding_mask", query.dtype, attn_mask, "attn_mask")
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = float_mask(attn_mask, "attn_mask", query.dtype)
            is_causal = False  # the mask says it; torch drops the hint here too
        self._check_shapes(query, key, value, batch_first)
        q, k, v = self._project(query, key, value, batch_first)
        output, weights = self._attend(
            q, k, v, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
        # the output projection sees the inputs' layout too
        output = self.out_proj(output if batch_first else output.transpose(0, 1))
        if not batched:
            return output.squeeze(0), None if weights is None else weights.squeeze(0)
        return output, weights

    def _check_shapes(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch_first: bool) -> None:
        if query.shape[2] != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {query.shape[2]}")
        if self._qkv_same_embed_dim and key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if not self._qkv_same_embed_dim and key.shape[:2] != value.shape[:2]:
            what = "batch and sequence" if batch_first else "sequence and batch"
            raise AssertionError(f"key's {what} dims {key.shape[:2]} do not match value's {value.shape[:2]}")

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch_first: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V of inputs in their own layout ((N, T, features) or (T, N, features)), each (N, T, H, d)."""
        e, heads = self.embed_dim, (self.num_heads, self.head_dim)
        linear = self._projection()
        if self._qkv_same_embed_dim:
            bias = self.in_proj_bias
            if query is key and key is value:  # self-attention: one matmul, viewed as (…, 3, H, d) before the split
                # so that the heads' gradients are stacked once in backward, not copied and then concatenated
                q, k, v = linear(query, "in_proj_weight", bias).unflatten(-1, (3, *heads)).unbind(-3)
                return _batch_first(q, k, v, batch_first)
            elif key is value:
                q = linear(query, "in_proj_weight", bias).split(e, dim=-1)[0]
                k, v = linear(key, "in_proj_weight", bias).split(e, dim=-1)[1:]
            else:
                q = linear(query, "in_proj_weight", bias).split(e, dim=-1)[0]
                k = linear(key, "in_proj_weight", bias).split(e, dim=-1)[1]
                v = linear(value, "in_proj_weight", bias).split(e, dim=-1)[2]
            q, k, v = _batch_first(q, k, v, batch_first)
        else:
            q, k, v = (linear(x, name, None) for x, name in zip((query, key, value), self.feedback_weights))
            q, k, v = _batch_first(q, k, v, batch_first)
            packed_bias: torch.Tensor | None = self.in_proj_bias  # None with bias=False (torch's stub does not say)
            if packed_bias is not None:  # its per-sample sums take the batch in dim 0
                q, k, v = MF.add_packed_bias(q, k, v, packed_bias)
        return q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)

    def _projection(self) -> Callable[[torch.Tensor, str, torch.Tensor | None], torch.Tensor]:
        """``linear(x, weight_name, bias)``: the plain Function, or, under a rule and recording a graph, the one that
        sends the error back through the rule's M for that weight (each M computed once per forward pass)."""
        rule = self.rule
        if rule is None or not torch.is_grad_enabled():
            return lambda x, name, bias: MF.linear(x, getattr(self, name), bias)
        matrices = {name: rule.feedback(self, name) for name in self.feedback_weights}
        return lambda x, name, bias: linear_feedback(x, getattr(self, name), bias, matrices[name])

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        need_weights: bool,
        attn_mask: torch.Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of Q, K, V (N, T, H, d): the heads' outputs side by side (N, L, E), and the weights if asked."""
        batch, target = q.shape[:2]
        heads, head_dim = self.num_heads, self.head_dim
        if attn_mask is not None:
            attn_mask = _mask_as_heads(attn_mask, (target, k.shape[1]), batch, heads)
        if self.bias_k is not None and self.bias_v is not None:
            k, v = (
                MF.cat_token(t.flatten(2), bias, first=False).unflatten(-1, (heads, head_dim))
                for t, bias in ((k, self.bias_k), (v, self.bias_v))
            )
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        # (N, H, T, d), each copied once into its own memory: the attention's batched matmuls (forward and backward)
        # then read them in place instead of copying strided views at every product, and in backward the three
        # gradients are stacked into the projection's layout in one copy
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(batch, heads, 1, head_dim)], dim=2) for t in (k, v))
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        if key_padding_mask is not None:
            _check_key_padding_mask(key_padding_mask, k.shape[2], batch)
            padding = key_padding_mask.view(batch, 1, 1, k.shape[2])
            attn_mask = padding if attn_mask is None else attn_mask + padding
        dropout = self.dropout if self.training else 0.0
        attended = MF.scaled_dot_product_attention(q, k, v, attn_mask, dropout, is_causal)  # (N, H, L, d)
        attended = attended.transpose(1, 2).flatten(2)  # (N, L, E)
        if not need_weights:
            return attended, None
        weights = MF.attention_weights(q, k, attn_mask)  # (N, H, L, S)
        return attended, weights.mean(dim=1) if average_attn_weights else weights


def float_mask(
    mask: torch.Tensor | None,
    name: str,
    dtype: torch.dtype,
    other: torch.Tensor | None = None,
    other_name: str | None = None,
) -> torch.Tensor | None:
    """torch's canonical form of an attention mask (``F._canonical_mask``): a boolean one as 0 / −inf in ``dtype``,
    a float one as it is; with ``other_name``, torch's warning when ``other``, the call's other mask, is of the
    other kind."""
    if other_name is None:
        return F._canonical_mask(
            mask=mask, mask_name=name, other_type=None, other_name="", target_type=dtype, check_other=False
        )
    return F._canonical_mask(
        mask=mask, mask_name=name, other_type=F._none_or_dtype(other), other_name=other_name, target_type=dtype
    )


def _unsqueezed(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, E) -> (1, T, E), keeping ``query is key is value`` (self-attention) where it holds."""
    q = query.unsqueeze(0)
    k = q if key is query else key.unsqueeze(0)
    v = k if value is key else value.unsqueeze(0)
    return q, k, v


def _batch_first(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch_first: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V as (N, T, …) views."""
    if batch_first:
        return q, k, v
    return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)


def _mask_as_heads(mask: torch.Tensor, size: tuple[int, int], batch: int, heads: int) -> torch.Tensor:
    """A 2-D (L, S) mask as it is (it broadcasts), a 3-D (N·H, L, S) one as (N, H, L, S); torch's checks."""
    if mask.dim() == 2:
        if mask.shape != size:
            raise RuntimeError(f"The shape of the 2D attn_mask is {mask.shape}, but should be {size}.")
        return mask
    if mask.dim() == 3:
        expected = (batch * heads, *size)
        if mask.shape != expected:
            raise RuntimeError(f"The shape of the 3D attn_mask is {mask.shape}, but should be {expected}.")
        return mask.view(batch, heads, *size)
    raise RuntimeError(f"attn_mask's dimension {mask.dim()} is not supported")


def _check_key_padding_mask(mask: torch.Tensor, source: int, batch: int) -> None:
    if mask.shape != (batch, source):
        raise AssertionError(f"expecting key_padding_mask shape of {(batch, source)}, but got {mask.shape}")
