"""References for per-sample gradients: torch.func's vmap(grad) over a torch twin, and a loop over
single-sample batches through the manual model's plain backward; and the clipped gradient built from them.

Every model here is scored by a per-sample loss with its own random weights, ℓ_n = Σ R_n ⊙ y_n + ½ Σ y_n²
(any output shape), L = Σ_n ℓ_n ("sum") or (1/N) Σ_n ℓ_n ("mean").
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap


def sample_loss(y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """ℓ_n summed over the samples of ``y`` (a batch, or a batch of one)."""
    return (r * y).sum() + 0.5 * y.square().sum()


def batch_loss(y: torch.Tensor, r: torch.Tensor, loss_reduction: str) -> torch.Tensor:
    total = sample_loss(y, r)
    return total / y.shape[0] if loss_reduction == "mean" else total


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def vmap_grads(reference: torch.nn.Module, x: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇ℓ_n for every n, (N, *p.shape) per parameter name, by torch.func over ``reference`` (a torch module)."""
    params = {k: v.detach() for k, v in trainable(reference).items()}
    # one copy of the buffers per sample: a layer may update them in place (InstanceNorm's running statistics in
    # training), which vmap refuses for an unbatched tensor
    buffers = {k: v.detach().expand(x.shape[0], *v.shape).clone() for k, v in reference.named_buffers()}

    def loss_n(p, b, x_n, r_n):
        return sample_loss(functional_call(reference, (p, b), (x_n.unsqueeze(0),)), r_n.unsqueeze(0))

    return vmap(grad(loss_n), in_dims=(None, 0, 0, 0))(params, buffers, x, r)


def loop_grads(model: torch.nn.Module, x: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇ℓ_n for every n, one single-sample batch at a time through ``model``'s own (plain) backward."""
    params = trainable(model)
    rows = []
    for n in range(x.shape[0]):
        loss = sample_loss(model(x[n : n + 1]), r[n : n + 1])
        rows.append(torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True))
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


def clipped_reference(per_sample: dict[str, torch.Tensor], max_grad_norm: float, loss_reduction: str):
    """(norms (N,), name -> the mean or sum over n of g_n clipped to ``max_grad_norm`` over all parameters)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_sample.values()], 1).norm(dim=1)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    grads = {}
    for name, g in per_sample.items():
        total = torch.einsum("n,n...->...", factors, g)
        grads[name] = total / g.shape[0] if loss_reduction == "mean" else total
    return norms, grads
