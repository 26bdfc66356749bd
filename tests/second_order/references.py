"""Brute-force references for ``manualbp.curvature``: per-sample Jacobians of the logits by ``torch.func.jacrev``
over a torch twin of the model, one sample at a time, and the loss Hessian by ``torch.func.hessian``:

    GGN(θ) = Σ_n J_nᵀ H_n J_n        J_n = ∂f_n/∂θ   H_n = ∂²L/∂f_n²

its diagonal summed over the batch (``diag_ggn_exact``) or per sample (``diag_ggn_exact_batch``), and each
parameter's whole block (``kflr`` of a parameter without Kronecker factors)."""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev


def loss_of(kind: str, reduction: str):
    """L(f, target) of ``kind`` ("cross_entropy" with class indices, "mse_loss"), torch's functional."""
    if kind == "cross_entropy":
        return lambda f, t: torch.nn.functional.cross_entropy(f, t, reduction=reduction)
    return lambda f, t: torch.nn.functional.mse_loss(f, t, reduction=reduction)


def ggn_reference(
    reference: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, kind: str, reduction: str
) -> dict[str, dict[str, torch.Tensor]]:
    """{parameter name: {"diag": Σ_n diag(J_nᵀ H_n J_n), "batch": (N, *θ) per sample, "block": (P, P)}}."""
    params = {k: v.detach() for k, v in reference.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in reference.named_buffers()}
    loss = loss_of(kind, reduction)
    with torch.no_grad():
        logits = reference(x)
    hess = hessian(lambda f: loss(f, target))(logits)  # (N, C, N, C): block diagonal over the samples
    features = logits[0].numel()
    out: dict[str, dict[str, torch.Tensor]] = {
        k: {
            "diag": torch.zeros_like(p),
            "batch": p.new_zeros(x.shape[0], *p.shape),
            "block": p.new_zeros(p.numel(), p.numel()),
        }
        for k, p in params.items()
    }
    for n in range(x.shape[0]):
        b = {k: v.clone() for k, v in buffers.items()}

        def logits_n(p, n=n, b=b):
            return functional_call(reference, (p, b), (x[n : n + 1],)).reshape(-1)

        jac = jacrev(logits_n)(params)  # name -> (C, *θ)
        h_n = hess.reshape(x.shape[0], features, x.shape[0], features)[n, :, n, :]
        for k, j in jac.items():
            flat = j.reshape(j.shape[0], -1)  # (C, P)
            block = flat.t() @ h_n @ flat
            out[k]["block"] += block
            out[k]["batch"][n] = block.diagonal().reshape(params[k].shape)
            out[k]["diag"] += out[k]["batch"][n]
    return out


def sample_grads(
    reference: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, kind: str, reduction: str
) -> dict[str, torch.Tensor]:
    """g_n, (N, *θ) per parameter: the gradient of sample n's term of the loss as the reduction weighs it (with
    "mean" the g_n sum to the batch gradient, BackPACK's ``grad_batch``), one sample at a time."""
    params = {k: v for k, v in reference.named_parameters() if v.requires_grad}
    loss = loss_of(kind, "sum")
    denominator = 1
    if reduction == "mean":
        denominator = x.shape[0] if kind == "cross_entropy" else target.numel()
    rows = []
    for n in range(x.shape[0]):
        value = loss(reference(x[n : n + 1]), target[n : n + 1]) / denominator
        rows.append(torch.autograd.grad(value, list(params.values()), allow_unused=True, materialize_grads=True))
    return {k: torch.stack([row[i] for row in rows]) for i, k in enumerate(params)}
