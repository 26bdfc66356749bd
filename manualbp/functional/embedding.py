"""Embedding lookup y = W[indices] with its hand-written backward (its reduction through ``functional._reduction``).

Row t of the output is row idx_t of the table W (V, D): y_t = W[idx_t]. The lookup is linear in W, so its
backward scatters each output row's gradient back to the row it was read from, summing where an index repeats:

    dL/dW = Σ_t onehot(idx_t) ⊗ dL/dy_t          (zeros(V, D).index_add_(0, idx, dL/dy rows))

with two of torch's options: the ``padding_idx`` row gets no gradient, and ``scale_grad_by_freq`` divides the
gradient of row v by the number of times v occurs in the batch's indices. The indices get no gradient.
``max_norm`` renormalises, in place and before the lookup, each looked-up row whose ``norm_type``-norm exceeds
it (``torch.embedding_renorm_`` without grad, as ``torch.nn.functional.embedding`` does): it changes W, not the
map, so the backward does not see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION, into, per_sample_factor
from manualbp.functional._validation import InputError, check_floating, check_same_device, is_int, shape_str


@function
class EmbeddingFunction(torch.autograd.Function):
    """y = W[indices].     indices: (*) integers in [0, V)   W: (V, D)   y: (*, D)

    With G = dL/dy flattened to (M, D) and idx = indices flattened to (M,), M = prod(*):

        dL/dW = Σ_m onehot(idx_m) ⊗ G_m      (V, D): a scatter-add of G's rows into the rows they were read from
                  rows m with idx_m = padding_idx left out; with ``scale_grad_by_freq`` row v divided by
                  count(v) = Σ_m [idx_m = v]
        dL/dindices: none (integers)

    The backward is linear in G and made of differentiable torch ops (masked_fill, index_add), so double
    backward sees it. Forward mode (tangent Ẇ; the indices have none):

        ẏ = Ẇ[indices]
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(indices, weight, padding_idx, scale_grad_by_freq):
        return F.embedding(indices, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        indices, weight, padding_idx, scale_grad_by_freq = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.set_materialize_grads(False)  # an absent tangent or dL/dy arrives as None (see _tangents)
        ctx.num_embeddings = weight.shape[0]
        ctx.padding_idx = padding_idx
        ctx.scale_grad_by_freq = scale_grad_by_freq

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None or not ctx.needs_input_grad[1]:
            return None, None, None, None
        (indices,) = ctx.saved_tensors
        if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
            if ctx.scale_grad_by_freq:  # the counts are the whole batch's: they mix the samples
                REDUCTION.mode.refuse(
                    ctx,
                    (EmbeddingTerms.ordinals[0],),
                    "embedding with scale_grad_by_freq=True (its gradient is divided by each index's count over "
                    "the whole batch)",
                    remedy="Build the Embedding with scale_grad_by_freq=False",
                )
            else:
                terms = EmbeddingTerms(grad_out, indices, ctx.num_embeddings, ctx.padding_idx, True)
                (grad_w,) = REDUCTION.mode.reduce(ctx, terms)
                return None, grad_w, None, None
        grad_w = embedding_reduction(grad_out, indices, ctx.num_embeddings, ctx.padding_idx, ctx.scale_grad_by_freq)
        return None, grad_w, None, None

    @staticmethod
    def jvp(ctx, _, weight_dot, __, ___):
        (indices,) = ctx.saved_tensors
        return None if weight_dot is None else F.embedding(indices, weight_dot)


def _rows(grad_out: torch.Tensor, indices: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    """G as (M, D) rows, one per index, the rows of ``padding_idx`` set to zero."""
    rows = grad_out.reshape(indices.numel(), grad_out.shape[-1])
    if padding_idx is None:
        return rows
    return rows.masked_fill((indices.reshape(-1) == padding_idx).unsqueeze(1), 0)


def embedding_reduction(
    grad_out: torch.Tensor,
    indices: torch.Tensor,
    num_embeddings: int,
    padding_idx: int | None = None,
    scale_grad_by_freq: bool = False,
) -> torch.Tensor:
    """dL/dW (V, D) of y = W[indices] from G = dL/dy (*indices.shape, D): G's rows scatter-added into the rows of
    their indices, the ``padding_idx`` row zero; with ``scale_grad_by_freq`` row v divided by v's count."""
    idx = indices.reshape(-1)
    rows = _rows(grad_out, indices, padding_idx)
    if scale_grad_by_freq:  # count(v) by a scatter-add of ones, in integers (no bincount: it has no batching rule)
        counts = idx.new_zeros(num_embeddings).index_add(0, idx, torch.ones_like(idx))
        rows = rows / counts[idx].unsqueeze(1)  # every index read counts at least itself: no division by 0
    return rows.new_zeros(num_embeddings, rows.shape[1]).index_add(0, idx, rows)


class EmbeddingTerms:
    """The reduction of y = W[indices], for ``REDUCTION.mode``: indices (N, *), G = dL/dy (N, *, D), T = prod(*):

        dL/dW_n = Σ_t onehot(idx_nt) ⊗ G_nt        (V, D); the ``padding_idx`` row zero

    ``per_sample`` materialises it (N, V, D) with one scatter-add into the rows n·V + idx_nt. ``sq_norms``
    does not: as Opacus's ``compute_embedding_norm_sample``,

        ||dL/dW_n||² = Σ_v ||Σ_{t: idx_nt = v} G_nt||² = Σ_{t,t'} [idx_nt = idx_nt'] (G_nt · G_nt')

    sums G's rows over each distinct (sample, index) pair (``torch.unique`` of n·V + idx_nt) and adds up their
    squared norms per sample: N·T·D values, not N·V·D. ``weighted`` and ``total`` are plain scatter-adds of G
    (weighted per sample), cheaper than any sum over (N, V, D). Dim 0 of the indices is the batch (one index per
    sample when they are 1-D); ``leading`` and ``time_major()`` as ``LinearTerms``' for (T, N) indices.
    ``scale_grad_by_freq`` (counts over the whole batch) is refused before these terms are made.
    """

    ordinals = (1,)  # W follows the indices among the Function's tensor inputs
    kept = None

    def __init__(
        self, grad_out: torch.Tensor, indices: torch.Tensor, num_embeddings: int, padding_idx: int | None, need: bool
    ) -> None:
        self.grad_out, self.indices = grad_out, indices
        self.num_embeddings, self.padding_idx = num_embeddings, padding_idx
        self.needs = (need,)
        self.batched = indices.dim() >= 1
        self.batch = indices.shape[0] if self.batched else 1
        self.leading = tuple(indices.shape[:2]) if indices.dim() >= 2 else None

    def time_major(self) -> EmbeddingTerms:
        """The same terms with dim 1 of the indices (and of G) as the batch: a time-major sequence (T, N, *)."""
        terms = EmbeddingTerms(
            self.grad_out.movedim(1, 0), self.indices.movedim(1, 0), self.num_embeddings, self.padding_idx, False
        )
        terms.needs, terms.leading = self.needs, self.leading
        return terms

    def _scaled(self, scale) -> torch.Tensor:
        """G with sample n's rows times scale[n] (a tensor (N,)), times ``scale`` (a number), or as it is (None)."""
        if scale is None:
            return self.grad_out
        if isinstance(scale, torch.Tensor):
            return self.grad_out * per_sample_factor(scale, self.grad_out)
        return self.grad_out * scale

    def _sample_rows(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G's rows (N·T, D), padding rows zero; their flat keys n·V + idx_nt (N·T,))."""
        n, v = self.batch, self.num_embeddings
        rows = _rows(g, self.indices, self.padding_idx)
        samples = torch.arange(n, device=self.indices.device).repeat_interleave(self.indices.numel() // max(n, 1))
        return rows, samples * v + self.indices.reshape(-1)

    def per_sample(self, scale=None, out=(None,)):
        if not self.needs[0]:
            return (None,)
        g = self._scaled(scale)
        n, v, d = self.batch, self.num_embeddings, g.shape[-1]
        rows, keys = self._sample_rows(g)
        grad_w = into(out[0] if out else None, (n, v, d), g).zero_()
        grad_w.view(n * v, d).index_add_(0, keys, rows)
        return (grad_w,)

    def sq_norms(self) -> torch.Tensor:
        rows, keys = self._sample_rows(self.grad_out)
        pairs, which = torch.unique(keys, return_inverse=True)  # the distinct (sample, index) pairs
        sums = rows.new_zeros(pairs.shape[0], rows.shape[1]).index_add_(0, which, rows)
        norms = rows.new_zeros(self.batch)
        return norms.index_add_(0, torch.div(pairs, self.num_embeddings, rounding_mode="floor"), sums.square().sum(1))

    def reduce(self, scale=None):
        if not self.needs[0]:
            return (None,)
        return (embedding_reduction(self._scaled(scale), self.indices, self.num_embeddings, self.padding_idx),)

    def weighted(self, scale: torch.Tensor):
        return self.reduce(scale)

    def total(self, samples, scale=None):
        return self.reduce()


def embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.embedding``: the rows ``weight[input]``.

    input: (*) integer indices in [0, num_embeddings)   weight: (num_embeddings, embedding_dim)   output: (*, D)
    ``padding_idx`` (negative counts from the end): that row gets no gradient. ``max_norm``: each row the input
    reads whose ``norm_type``-norm exceeds it is renormalised to it, in place in ``weight``, before the lookup
    (as torch does). ``scale_grad_by_freq``: each row's gradient divided by its index's count in ``input``.
    ``sparse=True`` (a sparse COO gradient) is not supported: NotImplementedError.
    """
    op = "embedding"
    if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int64, torch.int32):
        got = f"dtype {input.dtype}" if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(f"{op}: expected input of integer indices (torch.long or torch.int), got {got}")
    check_floating(op, weight=weight)
    check_same_device(op, input=input, weight=weight)
    if weight.dim() != 2:
        raise InputError(f"{op}: expected a 2-D weight (num_embeddings, embedding_dim), got shape {shape_str(weight)}")
    padding_idx = embedding_padding_idx(op, padding_idx, weight.shape[0])
    if sparse:
        raise NotImplementedError(
            f"{op}: sparse=True (a sparse COO gradient of the weight) is not supported by manualbp; use sparse=False"
        )
    if max_norm is not None:
        input = input.contiguous()  # as torch's (embedding_renorm_ would make it contiguous anyway)
        with torch.no_grad():
            torch.embedding_renorm_(weight.detach(), _rows_read(input, weight), max_norm, norm_type)
    return apply(EmbeddingFunction, input, weight, padding_idx, bool(scale_grad_by_freq))


def _rows_read(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The indices whose rows ``max_norm`` renormalises: ``input``; under ``torch.func.vmap`` of indices with a
    weight the slices share (not batched), the indices of every slice (the batched tensor's values, unwrapped).

    The in-place renorm of a shared weight by batched indices is what vmap cannot batch ("vmap: embedding_renorm_
    ... is not possible"); renorming the rows of all slices at once is what a loop over the slices does, since a
    slice reads only its own rows and a row once renormalised stays within max_norm."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return input
    functorch = torch._C._functorch
    table: torch.Tensor = weight
    while functorch.is_functorch_wrapped_tensor(table):
        if functorch.is_batchedtensor(table):
            return input  # a weight per slice: vmap renorms each slice's own (torch's fallback)
        table = functorch.get_unwrapped(table)
    while functorch.is_functorch_wrapped_tensor(input):
        input = functorch.get_unwrapped(input)
    return input


def embedding_padding_idx(op: str, padding_idx: int | None, num_embeddings: int) -> int | None:
    """``padding_idx`` checked to lie in [-num_embeddings, num_embeddings) and made non-negative (None stays None);
    shared with the Embedding layer's constructor."""
    if padding_idx is None:
        return None
    if not is_int(padding_idx):
        raise TypeError(f"{op}: padding_idx must be an int or None, got {padding_idx!r}")
    index = int(padding_idx)
    if not -num_embeddings <= index < num_embeddings:
        raise InputError(
            f"{op}: padding_idx must be within num_embeddings: expected -{num_embeddings} <= padding_idx < "
            f"{num_embeddings}, got {index}"
        )
    return index % num_embeddings
