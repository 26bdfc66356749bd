"""Scaled dot-product attention with a hand-written backward, derived as FlashAttention-2 derives it.

With Q: (B..., L, E), K: (B..., S, E), V: (B..., S, Eᵥ), a scale s (1/√E by default) and an additive bias M
(the float mask; a boolean mask or ``is_causal`` contributes -∞ where a key does not take part):

    S = s · Q Kᵀ + M                    (B..., L, S)
    ℓ = logsumexp_rows(S)               (B..., L)      one number per query row
    P = exp(S - ℓ)                      the softmax of each row
    O = (P ⊙ Z) V                       (B..., L, Eᵥ)  Z = keep-mask / (1 - p) with dropout p, else 1

**What is saved.** Q, K, V, the mask as it was given (not expanded), O and ℓ: no L×S tensor. The backward
recomputes S and P block by block from Q, K and ℓ.

**The backward** (FlashAttention-2, Dao 2023, §2.3). With dO = dL/dO:

    dV = (P ⊙ Z)ᵀ dO
    dP = Z ⊙ (dO Vᵀ)                    dL/dP (the dropout mask is a constant factor)
    dS = P ⊙ (dP - D),   D = rowsum(dO ⊙ O)
    dQ = s · dS K          dK = s · dSᵀ Q          dM = dS  (summed over the dims M was broadcast along)

dS is the softmax backward, dS = P ⊙ (dP - rowsum(P ⊙ dP)), and rowsum(P ⊙ dP) = Σ_j P_ij Z_ij (dO Vᵀ)_ij =
Σ_e dO_ie O_ie = D: the one row reduction the softmax needs comes from O, which is saved, instead of from all
of P. Every formula is then local to a block of keys: for keys j in block J, S_J = s · Q K_Jᵀ + M_J,
P_J = exp(S_J - ℓ) (exact, since ℓ is the final logsumexp), and dV_J, dK_J, dM_J are the block's own while
dQ = Σ_J s · dS_J K_J accumulates. The loop over key blocks of ``BLOCK_SIZE`` keys keeps the backward's extra
memory at a few (B..., L, BLOCK_SIZE) tensors, whatever S is: where no graph is recorded (a plain first-order
backward) a block's buffers are reused in place, S_J becoming P_J and P_J becoming dS_J, so two such tensors
are live at a time. dK is returned in the layout torch's math path gives it (a transposed (…, E, S) tensor,
contiguous for 2-D inputs and repeated GQA heads), so a layer below sees the same strides. Measured
(``experiments/bench_attention.py``, float32 CPU, 4 heads, E = 64, L = S = 2048): 8.0 MiB saved, as torch's
flash kernel (torch's math path: 70 MiB); 24 MiB peak extra memory in the backward, 0.18× the math path's.

**The forward** computes O and ℓ in the same blocks (online softmax): a running row maximum m, a running
sum l = Σ exp(S - m) and a running unnormalised output, each rescaled by exp(m_old - m_new) when the
maximum grows; at the end O = acc / l and ℓ = m + log l. The maximum is only a shift for stability (ℓ does
not depend on it), so it is taken without gradient.

**Forward mode** (jvp). With Ṡ = s (Q̇ Kᵀ + Q K̇ᵀ) + Ṁ and Ṗ = P ⊙ (Ṡ - rowsum(P ⊙ Ṡ)):

    Ȯ = (P ⊙ Z) V̇ + (Ṗ ⊙ Z) V = Σ_J [(P_J ⊙ Z_J) V̇_J + (P_J ⊙ Ṡ_J ⊙ Z_J) V_J] - c ⊙ O,
    c = rowsum(P ⊙ Ṡ)  (which is ℓ̇)

so it too runs block by block, in one pass, and never holds P whole. (ℓ is an internal output, marked
non-differentiable: its tangent is not returned.)

**Double backward.** The backward is made of differentiable torch operations, so autograd differentiates it
again. Under ``create_graph=True`` it does not use the saved O and ℓ, which carry no graph (their dependence
on Q, K, V would be silently dropped): it recomputes them from Q, K, V with the same blocked forward.

**Fully masked rows** (a query for which no key takes part, and S = 0): O = 0 and every gradient from that row
is 0, as torch's math path gives (its ``_safe_softmax`` returns zeros for a row of -∞). ℓ is stored as +∞
there, so that P = exp(S - ℓ) = 0 in the backward instead of exp(-∞ + ∞) = nan.

**Grouped-query attention** (``enable_gqa``): with Hq query heads and Hk key (Hv value) heads, key head h
serves query heads h·g … h·g + g - 1, g = Hq/Hk (torch's ``repeat_interleave``); the heads are repeated one
key block at a time, and dK (dV) is summed over the g query heads each key head served. Batch dims broadcast
as in torch's matmul (a single-head K against many query heads, say), and gradients are summed back to each
input's shape.

**Dropout** (``dropout_p > 0``, always applied, as torch's functional does): the forward draws one int64 seed
from torch's default generator (so ``torch.manual_seed`` makes a run reproducible); key block J's keep-mask
is drawn from a ``torch.Generator`` seeded with (seed, J), in the forward, the backward and the jvp alike, so
no L×S mask is stored (``dropout_factors`` rebuilds the whole factor Z, for tests). The masks cannot equal
torch's (drawn otherwise), only follow the same law. With dropout, ``torch.compile`` breaks the graph at the
seed (read on the host; ``fullgraph=True`` refuses it), and ``vmap`` needs randomness="same" (every slice gets
the same masks; "different" and the default "error" refuse the draw).

**Graph capture.** While torch.compile or torch.export traces the op, the keys form one block: a Python loop
over S / BLOCK_SIZE blocks would tie the graph to S (a recompilation per sequence length, an export specialised
to one). The captured graph still saves no L×S tensor for its backward; its buffers are the compiler's to plan.

**Precision.** float16 and bfloat16 inputs are computed in float32 (as torch's math path does on the CPU),
their output cast back; ℓ is kept in float32. Under ``torch.autocast`` the op is on the lower-precision
lists (``_autocast``), as torch's is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, capturing_graph, function
from manualbp.functional._inplace import scratch_writable
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    DtypeError,
    InputError,
    check_floating,
    check_real,
    check_same_device,
    check_same_dtype,
    check_tensor,
    shape_str,
)

OP = "scaled_dot_product_attention"

#: Keys per block in the forward, the backward and the jvp: each holds a few (B..., L, BLOCK_SIZE) tensors at a
#: time. Read at every call (a test may lower it to make small inputs span several blocks).
BLOCK_SIZE = 128

_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: Weyl increment that spreads block indices over the generator's 64-bit seed space (odd: distinct for every block).
_SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class AttentionOptions:
    """The non-tensor arguments of one call, kept on ``ctx`` for the backward and the jvp."""

    dropout_p: float
    is_causal: bool
    scale: float
    enable_gqa: bool
    seed: int


@function
class ScaledDotProductAttentionFunction(torch.autograd.Function):
    """O = softmax(s · Q Kᵀ + M) V, with ℓ = logsumexp_rows(s · Q Kᵀ + M) as a second, non-differentiable output.

    query Q: (B..., Hq, L, E)   key K: (B..., Hk, S, E)   value V: (B..., Hv, S, Eᵥ)   attn_mask M: bool (True =
    takes part) or float (added), broadcastable to (B..., Hq, L, S), or None   O: (B..., Hq, L, Eᵥ)   ℓ: (B..., Hq, L)

    Saved: Q, K, V, M as given, O and ℓ (no L×S tensor). Backward, per key block J (see the module docstring):

        P_J = exp(s · Q K_Jᵀ + M_J - ℓ)          D = rowsum(dL/dO ⊙ O)
        dL/dV_J = (P_J ⊙ Z_J)ᵀ · dL/dO           dL/dP_J = Z_J ⊙ (dL/dO · V_Jᵀ)
        dL/dS_J = P_J ⊙ (dL/dP_J - D)
        dL/dQ = Σ_J s · dL/dS_J · K_J            dL/dK_J = s · dL/dS_Jᵀ · Q            dL/dM_J = dL/dS_J

    Forward mode:  Ȯ = Σ_J [(P_J ⊙ Z_J) V̇_J + (P_J ⊙ Ṡ_J ⊙ Z_J) V_J] - c ⊙ O,   c = rowsum(P ⊙ Ṡ),
    Ṡ = s (Q̇ Kᵀ + Q K̇ᵀ) + Ṁ.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed):
        options = AttentionOptions(dropout_p, is_causal, scale, enable_gqa, seed)
        with _autocast_off(query):
            out, lse = _attend(query, key, value, attn_mask, options)
        return out.to(query.dtype), lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed = inputs
        out, lse = output
        ctx.save_for_backward(query, key, value, attn_mask, out, lse)
        ctx.save_for_forward(query, key, value, attn_mask, out, lse)
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.options = AttentionOptions(dropout_p, is_causal, scale, enable_gqa, seed)

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        none = (None,) * 5
        if grad_out is None:
            return None, None, None, None, *none
        query, key, value, attn_mask, out, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        with _autocast_off(query):
            grads = _attention_backward(query, key, value, attn_mask, out, lse, grad_out, ctx.options, needs)
        return *grads, *none

    @staticmethod
    def jvp(ctx, query_dot, key_dot, value_dot, mask_dot, *_):
        query, key, value, attn_mask, out, lse = ctx.saved_tensors
        with _autocast_off(query):
            return _attention_jvp(
                query, key, value, attn_mask, out, lse, (query_dot, key_dot, value_dot, mask_dot), ctx.options
            )


# ---------------------------------------------------------------------------------------------------
# The blocks


def _autocast_off(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast disabled on ``t``'s device: the op chooses its own precision (float32 for half inputs), and a
    matmul inside must not be cast down again."""
    if torch.amp.is_autocast_available(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _blocks(size: int) -> Iterator[tuple[int, int, int]]:
    """(index, start, end) of each key block; one empty block when there is no key (so shapes still flow).

    While torch.compile or torch.export captures a graph, all keys are one block: a loop over S / BLOCK_SIZE
    blocks would tie the graph to S (a recompilation for every sequence length, an export specialised to one);
    the compiler plans the buffers of the graph itself. What is saved is the same (no L×S tensor)."""
    step = BLOCK_SIZE
    if size == 0 or capturing_graph():
        yield 0, 0, size
        return
    for index, start in enumerate(range(0, size, step)):
        yield index, start, min(start + step, size)


def _heads(t: torch.Tensor, query_heads: int, options: AttentionOptions) -> torch.Tensor:
    """Key or value heads repeated for grouped-query attention (``repeat_interleave`` on dim -3); as is without."""
    if options.enable_gqa and t.shape[-3] != query_heads:
        return t.repeat_interleave(query_heads // t.shape[-3], dim=-3)
    return t


def _repeats_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, options: AttentionOptions) -> bool:
    """Whether grouped-query attention repeats the key and value heads (torch's rule: unless all three agree)."""
    return options.enable_gqa and not query.shape[-3] == key.shape[-3] == value.shape[-3]


def _fold_heads(t: torch.Tensor, heads: int, options: AttentionOptions) -> torch.Tensor:
    """The gradient of ``_heads``: the query heads' contributions summed per key (value) head, on dim -3."""
    if options.enable_gqa and t.shape[-3] != heads:
        return t.unflatten(-3, (heads, t.shape[-3] // heads)).sum(-3)
    return t


def _mask_block(mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The mask's columns of keys start … end - 1 (all of it when it broadcasts along the keys)."""
    return mask if mask.shape[-1] == 1 else mask[..., start:end]


def _block_scores(
    q: torch.Tensor,
    k_block: torch.Tensor,
    mask: torch.Tensor | None,
    options: AttentionOptions,
    start: int,
    end: int,
    in_place: bool,
    recompute: bool = False,
) -> torch.Tensor:
    """S_J = s · Q K_Jᵀ + M_J: -∞ where a boolean mask is False or, with is_causal, above the diagonal.

    ``recompute`` (the backward, the jvp): ``q`` is -Q and the scale -s, S_J = (-s) · (-Q) K_Jᵀ. A sign flip is
    exact in floating point, so these are the forward's numbers bit for bit (P_J = exp(S_J - ℓ) must agree with
    the forward's ℓ to the last bit: with logits of size 10² in float32 a rounding of S_J shows in the
    gradients), but another expression: torch.compile's common-subexpression pass would otherwise merge the
    recomputation with the forward's S_J, and the compiled forward would save S for the backward, the L×S tensor
    this op never saves."""
    scale = -options.scale if recompute else options.scale  # with ``q`` = -Q when recomputing
    scores = torch.matmul(q, k_block.transpose(-2, -1))
    scores = scores.mul_(scale) if in_place else scores * scale
    if options.is_causal:
        rows = torch.arange(q.shape[-2], device=q.device).unsqueeze(-1)
        cols = torch.arange(start, end, device=q.device)
        masked = cols > rows  # top-left aligned: query i sees keys j ≤ i
        return scores.masked_fill_(masked, -math.inf) if in_place else scores.masked_fill(masked, -math.inf)
    if mask is None:
        return scores
    block = _mask_block(mask, start, end)
    if block.dtype == torch.bool:
        return scores.masked_fill_(~block, -math.inf) if in_place else scores.masked_fill(~block, -math.inf)
    return scores.add_(block) if in_place else scores + block


def _exp_minus(scores: torch.Tensor, shift: torch.Tensor, in_place: bool) -> torch.Tensor:
    """exp(S - shift), in S's buffer when ``in_place``."""
    return scores.sub_(shift).exp_() if in_place else torch.exp(scores - shift)


def _block_seed(seed: int, block: int) -> int:
    """The generator seed of key block ``block`` of a call that drew ``seed``."""
    return (seed + (block + 1) * _SEED_STRIDE) % 2**64


def _dropout_factor(
    options: AttentionOptions, shape: torch.Size, block: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """Z_J: 1/(1-p) where an attention weight of block ``block`` is kept, 0 where dropped; None without dropout.

    Drawn from a generator seeded with (seed, block), so the forward, the backward and the jvp draw the same."""
    p = options.dropout_p
    if p <= 0:
        return None
    if p >= 1:
        return torch.zeros(shape, device=device, dtype=dtype)
    generator = torch.Generator(device=device)
    generator.manual_seed(_block_seed(options.seed, block))
    keep = torch.rand(shape, generator=generator, device=device, dtype=torch.float32) >= p
    return keep.to(dtype) / (1.0 - p)


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> Any:
    """``t`` in ``dtype`` (a boolean mask and None as they are)."""
    return t if t is None or t.dtype == torch.bool else t.to(dtype)


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    options: AttentionOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """O (in the compute dtype) and ℓ by the online softmax over key blocks, with differentiable torch operations
    (in place where no graph is recorded, ``scratch_writable``)."""
    in_place = scratch_writable()
    dtype = _compute_dtype(query.dtype)
    q, k, v, mask = query.to(dtype), key.to(dtype), value.to(dtype), _cast(mask, dtype)
    heads = q.shape[-3] if q.dim() >= 3 else 1
    row_max = row_sum = acc = shift = None
    for block, start, end in _blocks(k.shape[-2]):
        scores = _block_scores(q, _heads(k[..., start:end, :], heads, options), mask, options, start, end, in_place)
        block_max = scores.amax(-1) if end > start else scores.sum(-1) - math.inf
        new_max = (block_max if row_max is None else torch.maximum(row_max, block_max)).detach()
        shift = new_max.masked_fill(new_max == -math.inf, 0.0)  # a row with no key yet: any finite shift
        weights = _exp_minus(scores, shift.unsqueeze(-1), in_place)
        factor = _dropout_factor(options, weights.shape, block, q.device, dtype)
        dropped = weights if factor is None else weights * factor
        part = torch.matmul(dropped, _heads(v[..., start:end, :], heads, options))
        if row_max is None or row_sum is None or acc is None:
            row_sum, acc = weights.sum(-1), part
        elif in_place:
            rescale = torch.exp(row_max - shift)  # exp(m_old - m_new) ≤ 1; 0 while the row had no key
            row_sum = row_sum.mul_(rescale).add_(weights.sum(-1))
            acc = acc.mul_(rescale.unsqueeze(-1)).add_(part)
        else:
            rescale = torch.exp(row_max - shift)
            row_sum = row_sum * rescale + weights.sum(-1)
            acc = acc * rescale.unsqueeze(-1) + part
        row_max = new_max
    assert row_sum is not None and acc is not None and shift is not None  # _blocks yields at least one block
    empty = row_sum == 0  # a fully masked row (or no key at all)
    safe_sum = row_sum.masked_fill(empty, 1.0)
    out = acc.div_(safe_sum.unsqueeze(-1)) if in_place else acc / safe_sum.unsqueeze(-1)
    lse = (shift + torch.log(safe_sum)).masked_fill(empty, math.inf)  # +∞: P = exp(S - ℓ) = 0 in that row
    return out, lse


def _sum_to(t: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``t`` summed over the dims along which a tensor of ``shape`` was broadcast to ``t.shape``."""
    return t if t.shape == shape else t.sum_to_size(shape)


def _attention_backward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    options: AttentionOptions,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """dL/dQ, dL/dK, dL/dV, dL/dM (None where not needed), one key block at a time (see the module docstring)."""
    need_q, need_k, need_v, need_mask = needs
    need_mask = need_mask and mask is not None and mask.dtype != torch.bool
    dtype = _compute_dtype(query.dtype)
    if torch.is_grad_enabled():  # create_graph: O and ℓ must carry their dependence on Q, K, V
        out, lse = _attend(query, key, value, mask, options)
    in_place = scratch_writable()
    q, k, v, m = query.to(dtype), key.to(dtype), value.to(dtype), _cast(mask, dtype)
    d_out = grad_out.to(dtype)
    heads = q.shape[-3] if q.dim() >= 3 else 1
    row_term = (d_out * out.to(dtype)).sum(-1, keepdim=True)  # D = rowsum(dO ⊙ O)
    lse = lse.unsqueeze(-1)
    scaled_q = q * options.scale if need_k else q
    negated_q = -q  # for S_J, see _block_scores
    # torch's math path leaves dK in the layout of a transposed (…, E, S) tensor, except for 2-D inputs and when
    # grouped-query attention repeats the heads (there it is contiguous): dK is built in the same layout
    transposed_k = key.dim() > 2 and not _repeats_heads(query, key, value, options)
    grad_q: torch.Tensor | None = None
    grad_k, grad_v, grad_m = [], [], []  # per block: dK (…, S_J, E) or dKᵀ (…, E, S_J), dV (…, S_J, Eᵥ), dM
    for block, start, end in _blocks(k.shape[-2]):
        k_block = _heads(k[..., start:end, :], heads, options)
        v_block = _heads(v[..., start:end, :], heads, options)
        scores = _block_scores(negated_q, k_block, m, options, start, end, in_place, recompute=True)
        probs = _exp_minus(scores, lse, in_place)  # P_J
        factor = _dropout_factor(options, probs.shape, block, q.device, dtype)
        if need_v:
            dropped = probs if factor is None else probs * factor
            grad_v_block = torch.matmul(dropped.transpose(-2, -1), d_out)
            grad_v.append(
                _sum_to(
                    _fold_heads(grad_v_block, value.shape[-3] if value.dim() >= 3 else 1, options),
                    (*value.shape[:-2], end - start, value.shape[-1]),
                )
            )
        if not (need_q or need_k or need_mask):
            continue
        grad_probs = torch.matmul(d_out, v_block.transpose(-2, -1))  # dP_J
        if factor is not None:
            grad_probs = grad_probs.mul_(factor) if in_place else grad_probs * factor
        if in_place and grad_probs.shape == probs.shape:  # dS_J in P_J's buffer (P_J is not read again)
            grad_scores = probs.mul_(grad_probs.sub_(row_term))
            del grad_probs
        else:
            grad_scores = probs * (grad_probs - row_term)  # dS_J
        if need_q:
            part = torch.matmul(grad_scores, k_block)
            grad_q = part if grad_q is None else grad_q.add_(part) if in_place else grad_q + part
        if need_k and transposed_k:  # dK_Jᵀ = s · Qᵀ dS_J, (…, E, S_J)
            grad_k_block = torch.matmul(scaled_q.transpose(-2, -1), grad_scores)
            grad_k.append(
                _sum_to(
                    _fold_heads(grad_k_block, key.shape[-3], options), (*key.shape[:-2], key.shape[-1], end - start)
                )
            )
        elif need_k:  # dK_J = s · dS_Jᵀ Q, (…, S_J, E)
            grad_k_block = torch.matmul(grad_scores.transpose(-2, -1), scaled_q)
            heads_k = key.shape[-3] if key.dim() >= 3 else 1
            grad_k.append(
                _sum_to(_fold_heads(grad_k_block, heads_k, options), (*key.shape[:-2], end - start, key.shape[-1]))
            )
        if need_mask:
            assert m is not None
            grad_m.append(_sum_to(grad_scores, _mask_block(m, start, end).shape))
    grads: list[torch.Tensor | None] = [None, None, None, None]
    if need_q:
        assert grad_q is not None
        grads[0] = _sum_to(grad_q * options.scale, query.shape).to(query.dtype)
    if need_k:
        grads[1] = (_joined(grad_k, -1).transpose(-2, -1) if transposed_k else _joined(grad_k, -2)).to(key.dtype)
    if need_v:
        grads[2] = _joined(grad_v, -2).to(value.dtype)
    if need_mask:
        assert mask is not None
        if mask.shape[-1] == 1:  # the mask broadcasts along the keys: every block adds to its one column
            grad_mask = grad_m[0]
            for part in grad_m[1:]:
                grad_mask = grad_mask + part
        else:
            grad_mask = _joined(grad_m, -1)
        grads[3] = grad_mask.to(mask.dtype)
    return tuple(grads)


def _joined(blocks: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The key blocks' tensors side by side along ``dim``: the one block itself when there is one (``torch.cat``
    would copy it)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim)


def _attention_jvp(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    tangents: tuple[torch.Tensor | None, ...],
    options: AttentionOptions,
) -> tuple[torch.Tensor, None]:
    """(Ȯ, None) in one pass over the key blocks (see the module docstring): P is never held whole. ℓ is not
    differentiable (an internal output), so it gets no tangent."""
    query_dot, key_dot, value_dot, mask_dot = tangents
    if mask is None or mask.dtype == torch.bool:
        mask_dot = None
    dtype = _compute_dtype(query.dtype)
    q, k, v, m = query.to(dtype), key.to(dtype), value.to(dtype), _cast(mask, dtype)
    q_dot, k_dot, v_dot, m_dot = (_cast(t, dtype) for t in (query_dot, key_dot, value_dot, mask_dot))
    heads = q.shape[-3] if q.dim() >= 3 else 1
    negated_q = -q  # for S_J, see _block_scores
    lse_column = lse.unsqueeze(-1)
    acc: torch.Tensor | None = None
    row_dot: torch.Tensor | None = None  # c = rowsum(P ⊙ Ṡ) (the tangent of ℓ)
    for block, start, end in _blocks(k.shape[-2]):
        k_block = _heads(k[..., start:end, :], heads, options)
        v_block = _heads(v[..., start:end, :], heads, options)
        scores = _block_scores(negated_q, k_block, m, options, start, end, False, recompute=True)
        probs = _exp_minus(scores, lse_column, False)
        factor = _dropout_factor(options, probs.shape, block, q.device, dtype)
        dropped = probs if factor is None else probs * factor
        scores_dot = tangent_sum(
            None if q_dot is None else torch.matmul(q_dot, k_block.transpose(-2, -1)) * options.scale,
            None
            if k_dot is None
            else torch.matmul(q, _heads(k_dot[..., start:end, :], heads, options).transpose(-2, -1)) * options.scale,
            None if m_dot is None else _mask_block(m_dot, start, end),
        )
        part = None if v_dot is None else torch.matmul(dropped, _heads(v_dot[..., start:end, :], heads, options))
        if scores_dot is not None:
            weighted = probs * scores_dot
            total = weighted.sum(-1, keepdim=True)
            row_dot = total if row_dot is None else row_dot + total
            part = tangent_sum(part, torch.matmul(weighted if factor is None else weighted * factor, v_block))
        if part is not None:
            acc = part if acc is None else acc + part
    out_c = out.to(dtype)
    if acc is None:
        acc = torch.zeros_like(out_c)
    out_dot = acc if row_dot is None else acc - row_dot * out_c
    return out_dot.to(query.dtype), None


# ---------------------------------------------------------------------------------------------------
# The entry point


def _draw_seed() -> int:
    """One int64 from torch's default generator: the seed of a call's dropout masks (``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def dropout_factors(
    scores_shape: tuple[int, ...] | torch.Size,
    dropout_p: float,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The whole dropout factor Z (1/(1-p) kept, 0 dropped) of shape ``scores_shape`` = (B..., L, S) that a call with
    ``seed`` applies block by block: for a reference computation in tests (it is an L×S tensor; the op never makes
    it). ``scores_shape`` is the broadcast shape of s · Q Kᵀ (+ M), the GQA heads repeated."""
    options = AttentionOptions(float(dropout_p), False, 1.0, False, seed)
    *batch, rows, keys = scores_shape
    parts = []
    for block, start, end in _blocks(keys):
        factor = _dropout_factor(options, torch.Size((*batch, rows, end - start)), block, torch.device(device), dtype)
        parts.append(torch.ones((*batch, rows, end - start), device=device, dtype=dtype) if factor is None else factor)
    return torch.cat(parts, -1)


def _broadcast(op: str, what: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError as error:
        listing = " and ".join(str(s) for s in shapes)
        raise InputError(f"{op}: the batch dims of {what} do not broadcast: {listing}") from error


def _check_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> None:
    """torch's checks of ``scaled_dot_product_attention``'s arguments, in its order and with its exception types
    (RuntimeError, as InputError or DtypeError, where torch raises RuntimeError; IndexError where torch does)."""
    check_same_dtype(OP, query=query, key=key, value=value)
    check_same_device(OP, query=query, key=key, value=value, attn_mask=attn_mask)
    check_floating(OP, query=query)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() < 2:
            raise InputError(
                f"{OP}: expected query, key and value with at least 2 dimensions (…, sequence, features), "
                f"got {name} of shape {shape_str(t)}"
            )
    if attn_mask is not None:
        if attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
            raise DtypeError(
                f"{OP}: expected a bool attn_mask, a float32 one or one of query's dtype ({query.dtype}), "
                f"got {attn_mask.dtype}"
            )
        if is_causal:
            raise InputError(f"{OP}: an explicit attn_mask should not be set when is_causal=True")
        if attn_mask.dim() < 2:
            raise IndexError(
                f"{OP}: expected an attn_mask with at least 2 dimensions (…, L, S), got shape {shape_str(attn_mask)}"
            )
    if enable_gqa:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() < 3:
                raise IndexError(
                    f"{OP}: enable_gqa needs a heads dim (…, heads, sequence, features), got {name} of shape "
                    f"{shape_str(t)}"
                )
        if query.shape[-3] % key.shape[-3] or query.shape[-3] % value.shape[-3]:
            raise InputError(
                f"{OP}: with enable_gqa the number of heads in key ({key.shape[-3]}) and value ({value.shape[-3]}) "
                f"must divide the number of heads in query ({query.shape[-3]})"
            )
    if query.shape[-1] != key.shape[-1]:
        raise InputError(
            f"{OP}: query and key must have the same feature size E, got query of shape {shape_str(query)} and "
            f"key of shape {shape_str(key)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise InputError(
            f"{OP}: key and value must have the same sequence length S, got key of shape {shape_str(key)} and "
            f"value of shape {shape_str(value)}"
        )

    def repeated(t: torch.Tensor) -> tuple[int, ...]:
        if enable_gqa:
            return (*t.shape[:-3], query.shape[-3], *t.shape[-2:])
        return tuple(t.shape)

    batch = _broadcast(OP, "query and key", tuple(query.shape[:-2]), repeated(key)[:-2])
    _broadcast(OP, "the attention weights and value", batch, repeated(value)[:-2])
    if attn_mask is not None:
        scores = (*batch, query.shape[-2], key.shape[-2])
        try:
            fits = torch.broadcast_shapes(tuple(attn_mask.shape), scores) == scores
        except RuntimeError:
            fits = False
        if not fits:
            raise InputError(
                f"{OP}: attn_mask of shape {shape_str(attn_mask)} does not broadcast to the attention weights' "
                f"shape {scores} (…, L, S)"
            )
    if dropout_p > 1:
        raise InputError(f"{OP}: dropout probability has to be between 0 and 1, but got {dropout_p}")


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.scaled_dot_product_attention``, saving no L×S tensor.

    query (N..., Hq, L, E), key (N..., H, S, E), value (N..., H, S, Eᵥ) -> (N..., Hq, L, Eᵥ). ``attn_mask``: bool
    (True = takes part) or float (added to the scores), broadcastable to (N..., Hq, L, S); ``is_causal``: the
    top-left aligned causal mask (not with ``attn_mask``); ``scale``: 1/√E by default; ``dropout_p``: applied
    whenever > 0 (pass 0.0 in evaluation, as for torch's); ``enable_gqa``: Hq a multiple of H, each key/value head
    serving Hq/H consecutive query heads. See ``ScaledDotProductAttentionFunction`` and the module docstring for
    the backward, what is saved and how dropout is reproduced.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(OP, name, t)
    if attn_mask is not None:
        check_tensor(OP, "attn_mask", attn_mask)
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise TypeError(f"{OP}: {name} must be a bool, got {flag!r}")
    check_real(OP, "dropout_p", dropout_p)
    if scale is not None:
        check_real(OP, "scale", scale)
    p = float(dropout_p)
    query, key, value, attn_mask = autocast_inputs(OP, query, key, value, attn_mask)
    _check_attention(query, key, value, attn_mask, p, is_causal, enable_gqa)
    if scale is not None:
        scale = float(scale)  # torch's signature takes a double: a 0-d tensor's value is read, as by torch
    elif query.shape[-1] > 0:
        scale = 1.0 / math.sqrt(query.shape[-1])
    else:
        scale = 1.0  # E = 0: every score is 0 whatever the scale
    seed = _draw_seed() if p > 0 else 0
    out, _ = apply(
        ScaledDotProductAttentionFunction, query, key, value, attn_mask, p, is_causal, scale, enable_gqa, seed
    )
    return out
