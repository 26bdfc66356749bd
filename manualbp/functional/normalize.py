"""Lp normalisation along one dim (p = 2), y = x / max(‖x‖, ε), with its hand-written backward: Swin V2's cosine
attention normalises every query and key row this way (``torch.nn.functional.normalize``).

With d = max(‖x‖, ε) along ``dim`` and m = [‖x‖ ≥ ε] (where the norm, not ε, divides):

    y = x / d
    dL/dx = (dL/dy − m · y (y · dL/dy)) / d           (y · dL/dy summed along ``dim``)

Where ‖x‖ ≥ ε this is the projection of dL/dy off the direction y, divided by the norm (the Jacobian of x/‖x‖ is
(I − y yᵀ)/‖x‖); below ε the map is x/ε, a constant scale. The Jacobian is symmetric, so the tangent is the same
expression: ẏ = (ẋ − m · y (y · ẋ)) / d.
"""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import check_floating, check_real, normalize_dim


def _project(t: torch.Tensor, x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """(t − m · y (y · t)) / d for y = x / d, d = max(‖x‖, ε), m = [‖x‖ ≥ ε], along ``dim``: the Jacobian of the
    normalisation (symmetric) applied to ``t``; made of differentiable torch ops (double backward)."""
    norm = torch.linalg.vector_norm(x, 2, dim, keepdim=True)
    denom = norm.clamp_min(eps)
    y = x / denom
    along = (y * t).sum(dim, keepdim=True) * (norm >= eps)
    return (t - y * along) / denom


@function
class NormalizeFunction(torch.autograd.Function):
    """y = x / max(‖x‖₂, ε) along ``dim``.   x, y: any shape.

    With d = max(‖x‖, ε), m = [‖x‖ ≥ ε]:

        dL/dx = (dL/dy − m · y (y · dL/dy)) / d          ẏ = (ẋ − m · y (y · ẋ)) / d

    Saved: x (the norm is recomputed from it, so the backward is differentiable again in x).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dim, eps):
        return x / torch.linalg.vector_norm(x, 2, dim, keepdim=True).clamp_min(eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim, eps = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.dim, ctx.eps = dim, eps

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _project(grad_out, x, ctx.dim, ctx.eps), None, None

    @staticmethod
    def jvp(ctx, x_dot, _dim, _eps):
        (x,) = ctx.saved_tensors
        return _project(x_dot, x, ctx.dim, ctx.eps)


def normalize(input: torch.Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.normalize``: input / max(‖input‖_p, eps) along ``dim``, of
    input's shape. Only p = 2 (the Euclidean norm) is supported; another p raises NotImplementedError."""
    op = "normalize"
    check_floating(op, input=input)
    check_real(op, "p", p)
    check_real(op, "eps", eps)
    if float(p) != 2.0:
        raise NotImplementedError(f"{op}: only p=2 is supported by manualbp, got p={p}")
    dim = normalize_dim(op, dim, max(input.dim(), 1))
    return apply(NormalizeFunction, input, dim, float(eps))
