"""Symmetric factors of a loss's Hessian with respect to its input, the matrix that ``manualbp.curvature`` sends
back through the hand-written backward in place of the gradient's one column.

For a loss L(f) of the network's output f (N, C), a factor S (V, N, C) satisfies, per sample n,

    Σ_v S[v, n]ᵀ S[v, n] = ∂²L / ∂f_n²        (exact: V = C columns)
    E[Σ_v S[v, n]ᵀ S[v, n]] = ∂²L / ∂f_n²     (Monte Carlo: V = M samples)

so that the generalised Gauss-Newton matrix of a parameter θ is G(θ) = Σ_{v,n} (J_n S[v,n]ᵀ)(J_n S[v,n]ᵀ)ᵀ with
J_n = ∂f_n/∂θ: each column J_nᵀ S[v, n] is what the backward computes when it is handed S[v] as dL/df.

BackPACK 1.7.1's conventions (``core/derivatives/crossentropyloss.py``, ``mseloss.py``, ``nll_base.py``), so
the quantities carry the same scale:

    cross entropy, p = softmax(f_n):   ∂²ℓ_n/∂f_n² = diag(p) - p pᵀ
        exact:  S[v, n, c] = √p_c (δ_vc - √p_v √p_c)
        MC:     S[m, n] = (p - onehot(y_m)) / √M,   y_m ~ Categorical(p)
    mean squared error, ℓ = Σ_d (f_nd - t_nd)²:   ∂²ℓ/∂f_n² = 2 I
        exact:  S[v, n, d] = √2 δ_vd
        MC:     S[m, n] = 2 (y_m - f_n) / √M,   y_m ~ Normal(f_n, 1/2)

and with ``reduction="mean"`` every S divided by √D, D the mean's denominator (N for cross entropy, the number
of samples not ignored with ``ignore_index``; N·C for MSE). A loss whose dL/dy is not 1 (a scaled loss) scales
S by √(dL/dy).
"""

from __future__ import annotations

import math

import torch


class LossFactorError(ValueError):
    """A loss whose Hessian factor is not computed (its message says which setting)."""


def cross_entropy_factor(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str, mc_samples: int | None
) -> torch.Tensor:
    """S (V, N, C) for ``cross_entropy(logits, target)`` with class indices: V = C (``mc_samples`` None, exact)
    or ``mc_samples``. Rows of ignored samples are zero. Label smoothing leaves the Hessian as it is (the
    smoothed targets still sum to one), so it is accepted."""
    if logits.dim() != 2:
        raise LossFactorError(f"logits of shape (N, C) (got {tuple(logits.shape)}); spatial class maps are not")
    if target.dtype.is_floating_point:
        raise LossFactorError("class-index targets (got class probabilities)")
    _check_finite(logits)
    probs = torch.softmax(logits.detach(), dim=1)
    kept = (target != ignore_index).to(probs.dtype).unsqueeze(1)  # (N, 1)
    if mc_samples is None:
        tau = probs.sqrt()
        eye = torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)
        factor = tau.unsqueeze(0) * (eye.unsqueeze(1) - tau.t().unsqueeze(2) * tau.unsqueeze(0))
    else:
        drawn = torch.distributions.Categorical(probs=probs).sample(torch.Size([mc_samples]))
        onehot = torch.nn.functional.one_hot(drawn, probs.shape[1]).to(probs.dtype)
        factor = (probs.unsqueeze(0) - onehot) / math.sqrt(mc_samples)
    factor = factor * kept
    if reduction == "mean":
        factor = factor / math.sqrt(max(float(kept.sum()), 1.0))
    return factor


def mse_factor(output: torch.Tensor, target: torch.Tensor, reduction: str, mc_samples: int | None) -> torch.Tensor:
    """S (V, N, *D) for ``mse_loss(output, target)`` with output (N, *D): V = prod(D) (``mc_samples`` None,
    exact) or ``mc_samples``."""
    if output.dim() < 2:
        raise LossFactorError(f"an output with a batch dim, (N, *D) (got {tuple(output.shape)})")
    if target.shape != output.shape:
        raise LossFactorError(f"a target of the output's shape {tuple(output.shape)} (got {tuple(target.shape)})")
    _check_finite(output)
    output = output.detach()
    features = math.prod(output.shape[1:])
    if mc_samples is None:
        eye = math.sqrt(2) * torch.eye(features, dtype=output.dtype, device=output.device)
        factor = eye.unsqueeze(1).expand(features, output.shape[0], features).reshape(features, *output.shape)
    else:
        drawn = torch.distributions.Normal(output, math.sqrt(0.5)).sample(torch.Size([mc_samples]))
        factor = 2 * (drawn - output) / math.sqrt(mc_samples)
    if reduction == "mean":
        factor = factor / math.sqrt(output.numel())
    return factor


def _check_finite(output: torch.Tensor) -> None:
    if not bool(torch.isfinite(output).all()):
        raise LossFactorError("a finite loss input; it holds nan or inf (has the training diverged?)")
