r"""The quantities of ``manualbp.curvature``, each computed from one layer's terms (the factors its hand-written
backward hands the reduction seam, ``manualbp.functional._reduction``), with BackPACK 1.7.1's names, shapes and
scale. g_n is sample n's gradient as the loss's reduction gives it (with ``"mean"`` it carries 1/N: the g_n sum to
``p.grad``), J_vn = ∂(S[v]·f_n)/∂θ the column v of sample n (S the loss Hessian's factor, ``loss_factors``).

First order, from the backward of the gradient (G = dL/dy, one column):

    grad_batch         (N, *θ)   g_n
    batch_l2           (N,)      ||g_n||²            (Linear on (N, in): ||G_n||² ||x_n||², nothing materialised)
    sum_grad_squared   (*θ)      Σ_n g_n ⊙ g_n       (Linear on (N, in): (G ⊙ G)ᵀ (x ⊙ x), one matmul)
    variance           (*θ)      (1/N) Σ_n g_n ⊙ g_n - (Σ_n g_n / N)⊙²

Second order, from the backward of the V columns of S (C exact, or M Monte-Carlo samples):

    diag_ggn_exact, diag_ggn_mc, diag_h                (*θ)     Σ_{v,n} J_vn ⊙ J_vn
    diag_ggn_exact_batch, diag_ggn_mc_batch, diag_h_batch  (N, *θ)  Σ_v J_vn ⊙ J_vn
    kflr, kfac         a weight (out, in...): [B, A]    B = Σ_{v,n} s_vn s_vnᵀ,  s_vn = Σ_t G_vnt (out,)
                                                        A = (1/N) Σ_{n,t} x_nt x_ntᵀ     (x: the input, unfolded)
                       any other parameter: [Σ_{v,n} vec(J_vn) vec(J_vn)ᵀ]   (its GGN block; a bias's is B)

For Linear on (N, in) the diagonal needs no J: Σ_{v,n} J_vn ⊙ J_vn = (Σ_v G_v ⊙ G_v)ᵀ (x ⊙ x). A weight whose
per-sample gradient is a sum of outer products over positions (Linear on sequences, convolutions, transposed ones:
``OuterTerms``) forms J_vn = Σ_t G_vntᵀ x_nt from its factors as one batched matmul per chunk of samples, the
columns folded into the output side. Every other parameter forms J_vn from its own per-sample formula
(``terms.per_sample``) run under ``torch.func.vmap`` over the columns. Each chunk holds at most ``CHUNK_BYTES``
of J.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree

from manualbp.functional._reduction import OuterTerms
from manualbp.functional.conv import ConvTerms
from manualbp.functional.linear import LinearTerms

FIRST_ORDER = ("grad_batch", "batch_l2", "sum_grad_squared", "variance")
DIAGONALS = ("diag_ggn_exact", "diag_ggn_mc", "diag_h")
BATCH_DIAGONALS = ("diag_ggn_exact_batch", "diag_ggn_mc_batch", "diag_h_batch")
KRONECKER = ("kflr", "kfac")
SECOND_ORDER = DIAGONALS + BATCH_DIAGONALS + KRONECKER
#: the quantities computed from the exact factor (C columns) and from the Monte-Carlo one
EXACT = ("diag_ggn_exact", "diag_ggn_exact_batch", "diag_h", "diag_h_batch", "kflr")
SAMPLED = ("diag_ggn_mc", "diag_ggn_mc_batch", "kfac")
#: the most bytes of per-sample, per-column gradients one chunk of columns materialises
CHUNK_BYTES = 1 << 26
#: the most values of a parameter whose one-factor GGN block (``kfac`` of a non-Kronecker parameter) is formed
BLOCK_LIMIT = 1 << 12


class QuantityError(ValueError):
    """A quantity that a layer's terms do not give (the message says which and why)."""


def first_order(terms: Any, names: tuple[str, ...], grads: tuple[torch.Tensor | None, ...]) -> list[dict]:
    """``names`` (of ``FIRST_ORDER``) for each parameter of ``terms`` (G plain), one dict per parameter (empty
    where its gradient is not asked for); ``grads``: the layer's plain reduction, for ``variance``."""
    n = terms.batch
    fast = _rows_linear(terms)
    if fast:  # Linear on (N, in): g_n = G_nᵀ x_n, materialised only for grad_batch; the bias's g_n = G_n
        g, x = _linear_rows(terms)
        samples = (g.unsqueeze(2) * x.unsqueeze(1) if "grad_batch" in names else None, g)
    else:
        samples = terms.per_sample()
    results: list[dict] = []
    for i, (need, grad) in enumerate(zip(terms.needs, grads)):
        out: dict[str, torch.Tensor] = {}
        results.append(out)
        if not need:
            continue
        weight_of_linear = fast and i == 0
        sample: Any = samples[i]  # None only for the weight of Linear on rows without grad_batch
        if "grad_batch" in names:
            out["grad_batch"] = sample
        if "batch_l2" in names:
            out["batch_l2"] = (
                g.square().sum(1) * x.square().sum(1) if weight_of_linear else sample.square().flatten(1).sum(1)
            )
        if "sum_grad_squared" in names or "variance" in names:
            sgs = g.square().t().matmul(x.square()) if weight_of_linear else sample.square().sum(0)
            if "sum_grad_squared" in names:
                out["sum_grad_squared"] = sgs
            if "variance" in names:
                out["variance"] = sgs / n - (grad / n).square()
    return results


def second_order(terms: Any, names: tuple[str, ...], unwrap: Callable[[torch.Tensor], torch.Tensor]) -> list[dict]:
    """``names`` (of ``SECOND_ORDER``, all of one factor) for each parameter of ``terms``, whose G is batched
    over the factor's columns (``unwrap(t)``: t's values with the columns as dim 0, (V, *t.shape))."""
    diagonal = [q for q in names if q in DIAGONALS]
    batch = [q for q in names if q in BATCH_DIAGONALS]
    kronecker = [q for q in names if q in KRONECKER]
    results: list[dict] = [{} for _ in terms.needs]
    if _rows_linear(terms) and terms.needs[0]:  # the weight of Linear on (N, in): nothing materialised
        g, x = _linear_rows(terms, unwrap)
        g2 = g.square().sum(0)
        x2 = x.square()
        out = results[0]
        for q in diagonal:
            out[q] = g2.t().matmul(x2)
        for q in batch:
            out[q] = g2.unsqueeze(2) * x2.unsqueeze(1)
        for q in kronecker:
            out[q] = [_gram(g), _gram(x) / x.shape[0]]
        if len(terms.needs) > 1 and terms.needs[1]:  # the bias's J_vn is G_vn itself
            bias = results[1]
            for q in diagonal:
                bias[q] = g2.sum(0)
            for q in batch:
                bias[q] = g2
            for q in kronecker:
                bias[q] = [out[q][0]]
        todo = tuple(False for _ in terms.needs)
    else:
        todo = terms.needs
    kron_weight = bool(kronecker) and todo[0] and isinstance(terms, OuterTerms)
    if kron_weight:
        if not isinstance(terms, (LinearTerms, ConvTerms)) or terms.factors(terms.grad_out)[0].shape[1] != 1:
            raise QuantityError("Kronecker factors of a grouped or transposed convolution are not formed")
        g, x = terms.factors(terms.grad_out)
        g, x = unwrap(g)[:, :, 0], x[:, 0]  # (V, N, T, O), (N, T, K)
        s = g.sum(2)
        results[0].update({q: [_gram(s), _gram(x) / x.shape[0]] for q in kronecker})
        if not (diagonal or batch):  # the weight needs nothing else
            todo = (False, *todo[1:])
    if todo[0] and isinstance(terms, OuterTerms) and (diagonal or batch):  # Σ_v J_vn ⊙ J_vn from the factors
        for squares in _outer_weight_squares(terms, unwrap):
            for q in diagonal:
                results[0][q] = _add(results[0].get(q), squares.sum(0))
            for q in batch:
                results[0][q] = squares if q not in results[0] else torch.cat([results[0][q], squares])
        todo = (False, *todo[1:])
    if not any(todo):
        return results
    for v_chunk in _column_chunks(terms, todo, unwrap):
        for i, sample in enumerate(v_chunk):
            if sample is None or not todo[i]:
                continue
            squares = sample.square()
            out = results[i]
            for q in diagonal:
                out[q] = _add(out.get(q), squares.sum((0, 1)))
            for q in batch:
                out[q] = _add(out.get(q), squares.sum(0))
            if kronecker and not (kron_weight and i == 0):
                if sample[0, 0].numel() > BLOCK_LIMIT:
                    raise QuantityError(
                        f"a parameter of {sample[0, 0].numel()} values has no Kronecker factors here and its GGN "
                        f"block would be {sample[0, 0].numel()}² values (more than {BLOCK_LIMIT}²)"
                    )
                flat = sample.flatten(2)
                block = _gram(flat)
                for q in kronecker:
                    out[q] = [_add(out[q][0], block)] if q in out else [block]
    return results


def _outer_weight_squares(terms: OuterTerms, unwrap: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Σ_v J_vn ⊙ J_vn of the weight, (n, *weight_shape), for chunks of the samples of at most ``CHUNK_BYTES`` of
    J: from the factors g (N, B, T, O) and x (N, B, T, K), one of them batched over the V columns, as one batched
    matmul per chunk, J_n = g_nᵀ x_n with the columns folded into O (or K): (B, V·O, K)."""
    g, x = terms.factors(terms.grad_out)
    left = _is_batched(g)  # a transposed convolution's columns are on the patch side
    g, x = (unwrap(g), x) if left else (g, unwrap(x))
    batched = g if left else x
    columns, n, blocks = batched.shape[:3]
    o, k = g.shape[-1], x.shape[-1]
    chunk = max(1, CHUNK_BYTES // max(columns * blocks * o * k * batched.element_size(), 1))
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        if left:  # (v, N, B, T, O) -> (N, B, T, V·O)
            a, b = g[:, part].permute(1, 2, 3, 0, 4).flatten(3), x[part]
        else:
            a, b = g[part], x[:, part].permute(1, 2, 3, 0, 4).flatten(3)
        j = a.transpose(-1, -2).matmul(b)  # (n, B, V·O, K) or (n, B, O, V·K)
        shape = (-1, blocks, columns, o, k) if left else (-1, blocks, o, columns, k)
        yield j.reshape(shape).square_().sum(2 if left else 3).reshape(-1, *terms.weight_shape)


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """Σ r rᵀ over every row of ``rows`` (*, D): (D, D), one matmul (einsum would loop over a leading dim)."""
    flat = rows.reshape(-1, rows.shape[-1])
    return flat.t().matmul(flat)


def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total + term


def _rows_linear(terms: Any) -> bool:
    """Whether ``terms`` are Linear's on an input (N, in): one position per sample."""
    return isinstance(terms, LinearTerms) and terms.positions == 1


def _linear_rows(
    terms: LinearTerms, unwrap: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, x) of Linear on (N, in): (N, out) (``unwrap``: (V, N, out)) and (N, in)."""
    g, x = terms.factors(terms.grad_out)
    g, x = g.reshape(*g.shape[:1], -1), x.reshape(x.shape[0], -1)
    if unwrap is not None:
        g = unwrap(g)
    return g, x


def _column_chunks(
    terms: Any, todo: tuple[bool, ...], unwrap: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """Each chunk of columns' per-sample gradients J (v, N, *θ) of the parameters ``todo`` asks for (None for
    the others): the layer's ``per_sample`` under ``torch.func.vmap`` over the columns of its batched tensors."""
    leaves, spec = pytree.tree_flatten(vars(terms))
    batched = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and _is_batched(leaf)]
    physical = [unwrap(leaves[i]) for i in batched]
    columns = physical[0].shape[0]
    plain = copy.copy(terms)
    plain.needs = tuple(todo)

    def per_sample(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = list(leaves)
        for i, t in zip(batched, tensors):
            values[i] = t
        replaced = copy.copy(plain)
        replaced.__dict__.update(pytree.tree_unflatten(values, spec))
        replaced.needs = tuple(todo)
        return tuple(s if s is not None else torch.zeros(()) for s in replaced.per_sample())

    largest = max(math.prod(t.shape[1:]) for t in physical)
    per_column = max(largest, terms.batch * _largest_parameter(terms)) * physical[0].element_size()
    chunk = max(1, min(columns, CHUNK_BYTES // max(per_column, 1)))
    for start in range(0, columns, chunk):
        parts = [t[start : start + chunk] for t in physical]
        samples = torch.func.vmap(per_sample)(*parts)
        yield tuple(s if todo[i] else None for i, s in enumerate(samples))


def _largest_parameter(terms: Any) -> int:
    shape = getattr(terms, "weight_shape", None)
    return math.prod(shape) if shape is not None else 1


def _is_batched(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_batchedtensor(t)
