r"""Curvature from the hand-written backward: BackPACK's quantities beyond the gradient, for every manual layer.

    >>> with manualbp.curvature(model, "diag_ggn_exact", "kfac"):
    ...     manualbp.functional.cross_entropy(model(x), y).backward()
    >>> model[0].weight.diag_ggn_exact.shape, [f.shape for f in model[0].weight.kfac]

leaves on every trainable parameter p of ``model`` that the backward writes an attribute per quantity, named,
shaped and scaled as BackPACK 1.7.1 names, shapes and scales them (``quantities`` states each formula):
``grad_batch``, ``batch_l2``, ``sum_grad_squared``, ``variance`` (first order), ``diag_ggn_exact``,
``diag_ggn_mc``, ``diag_ggn_exact_batch``, ``diag_ggn_mc_batch``, ``diag_h``, ``diag_h_batch``, ``kfac``,
``kflr`` (second order), and ``p.grad`` as usual.

**The design: the seam carries a matrix.** A parametrised layer's backward hands its reduction to one seam
(``manualbp.functional._reduction``), as for per-sample gradients. In the backward of the gradient the
curvature mode takes each layer's terms (G = dL/dy and its input x) and forms the first-order quantities from
the same per-sample formulas the DP-SGD modes use (||G_n||² ||x_n||² for Linear on (N, in), nothing
materialised). When that backward reaches the loss (manualbp's ``cross_entropy`` or ``mse_loss``), the loss's
backward hands the mode its input f; the mode forms a symmetric factor S of the loss Hessian, Σ_v S_vᵀ S_v =
∂²L/∂f² (``loss_factors``: C columns exact, or M Monte-Carlo ones) and runs the backward of its columns from f
through the same hand-written backward functions, batched with ``torch.func.vmap`` over the columns. Each layer
then sees J_v = (what its backward makes of S_v), batched, and forms the second-order quantities from its
factors: the diagonal GGN of Linear on (N, in) as (Σ_v G_v ⊙ G_v)ᵀ (x ⊙ x), one matmul; Kronecker factors
B = Σ_v,n s sᵀ and A = E[x xᵀ]; the other layers square their per-sample, per-column gradients, chunked. No
layer has a second backward written for curvature, and no autograd reference is involved.

**What raises** (``CurvatureError``, never a wrong number): a layer that mixes the samples (batch norm with batch
statistics), a parameter with a gradient from a torch op or a torch.nn layer (convert the model), a loss other
than manualbp's cross entropy (class indices, no class weight) or MSE (target of the output's shape), a
second-order quantity with a learning rule attached (first-order ones compose), ``diag_h`` on a network with a
curved op (its residual terms are not propagated; ``diag_h_graph``), Kronecker factors of a grouped or
transposed convolution or of an embedding table, shared weights, and a per-sample context open at the same time.
"""

from __future__ import annotations

import torch

from manualbp.second_order.mode import CurvatureError, CurvatureMode
from manualbp.second_order.quantities import FIRST_ORDER, SECOND_ORDER

QUANTITIES = FIRST_ORDER + SECOND_ORDER


def curvature(model: torch.nn.Module, *quantities: str, mc_samples: int = 1) -> CurvatureMode:
    """Context manager: a backward inside it leaves on each trainable parameter p of ``model`` the attributes
    ``quantities`` (any of ``QUANTITIES``), as BackPACK's extensions of the same names do, and ``p.grad``.

    ``mc_samples``: the number M of Monte-Carlo columns of ``diag_ggn_mc``, ``diag_ggn_mc_batch`` and ``kfac``
    (BackPACK's ``mc_samples``). Each block starts afresh: opening it deletes the attributes an earlier block left;
    a second backward in the block replaces them. See ``manualbp.second_order`` for the design and what raises.

        >>> with manualbp.curvature(model, "diag_ggn_exact", "batch_l2"):
        ...     manualbp.functional.cross_entropy(model(x), y).backward()
        >>> model.fc1.weight.diag_ggn_exact.shape          # (out, in)
    """
    if not quantities:
        raise ValueError(f"curvature: name at least one quantity of {', '.join(QUANTITIES)}")
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"curvature: unknown quantity {unknown[0]!r}; the quantities are {', '.join(QUANTITIES)}")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise CurvatureError(
            "curvature: a DistributedDataParallel model; the context writes p.grad past DDP's reducer, so the ranks' "
            "gradients would not be averaged. Pass model.module: each rank's quantities are then those of its own batch"
        )
    if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or mc_samples < 1:
        raise ValueError(f"curvature: mc_samples must be a positive int, got {mc_samples!r}")
    return CurvatureMode(model, tuple(dict.fromkeys(quantities)), mc_samples)


__all__ = ["QUANTITIES", "CurvatureError", "CurvatureMode", "curvature"]
