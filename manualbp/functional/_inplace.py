"""What the in-place Functions (``relu(x, inplace=True)`` and the other ``inplace=True`` paths) share.

An in-place Function overwrites its first input x with the output and returns x itself, declared with
``ctx.mark_dirty(x)``. Autograd then bumps x's version counter and rebases x's history onto the
Function, so a Function that saved x earlier (to compute its own backward) raises autograd's usual
"one of the variables needed for gradient computation has been modified by an inplace operation"
instead of computing a gradient from the overwritten values. Its backward may use only what survives:
the output (which is x now), a mask, or a copy it made itself.

Three rules of torch 2.14 shape these Functions (measured):

* ``forward`` ends with ``return x`` (the input object itself), not with the value of the in-place
  method: Dynamo's ``torch.compile`` otherwise refuses the Function ("mark_dirty input not returned").
* ``jvp`` must update the input's tangent in place and return it (autograd checks this: "If the forward
  is modifying an input inplace, then the jvp function must modify the corresponding gradient inplace").
* ``generate_vmap_rule`` cannot be used: the generated rule hands ``setup_context`` batched wrappers,
  not the tensors ``forward`` saw, so ``mark_dirty`` no longer finds the input among the outputs. Each
  in-place Function has a ``vmap`` staticmethod instead, ``vmap_in_place`` below.
"""

from __future__ import annotations

from typing import Any

import torch

from manualbp.functional._dispatch import capturing_graph, function


@function
class CopyFunction(torch.autograd.Function):
    """x₀ = a copy of x, for an in-place Function whose backward needs the input it overwrites (SiLU).

    x, x₀: any shape.

    dL/dx = dL/dx₀          ẋ₀ = ẋ
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out

    @staticmethod
    def jvp(ctx, x_dot):
        return x_dot.clone()  # its own tensor: the in-place Function overwrites x's tangent


def scratch_writable() -> bool:
    """Whether a backward may write into a temporary it made itself (a mask, a block of scores, x̂ recomputed
    from x): no graph is recorded (a first-order backward; under ``create_graph`` every op must stay out of place
    for autograd to differentiate it), no torch.func transform is active (vmap cannot write a batched value into an
    unbatched tensor; ``manualbp.curvature`` runs backwards under vmap) and no graph is captured (the compiler
    plans buffers itself)."""
    return not (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active() or capturing_graph())


def vmap_in_place(
    function: type[torch.autograd.Function], in_dims: tuple[int | None, ...], x: torch.Tensor, *others: Any
) -> tuple[Any, Any]:
    """The vmap rule of an elementwise Function that overwrites its first argument ``x``.

    ``function`` is applied to the batched tensors themselves (batch dim included), so its own forward and
    backward run once for the whole batch. Every other tensor argument (a mask of x's shape) is laid out
    to broadcast against x: its batch dim moved to x's, or a size-1 dim inserted there when it is not
    batched. Each output is batched along x's batch dim.

    If x is not batched but another tensor is, x has no room for the batched result; torch's own
    in-place ops raise then, and so does this rule.
    """
    dim = in_dims[0]
    if dim is None:
        raise RuntimeError(
            f"vmap: {function.__name__} cannot write into its input in place: another argument is vmapped over "
            "but the input is not, so the result has more elements than the input; use inplace=False"
        )
    aligned = [_align(other, other_dim, dim) for other, other_dim in zip(others, in_dims[1:])]
    outputs = function.apply(x, *aligned)
    out_dims = dim if isinstance(outputs, torch.Tensor) else tuple(dim for _ in outputs)
    return outputs, out_dims


def _align(other: Any, other_dim: int | None, dim: int) -> Any:
    """``other`` (of x's unbatched shape) laid out to broadcast against x batched along ``dim``."""
    if not isinstance(other, torch.Tensor):
        return other
    return other.unsqueeze(dim) if other_dim is None else other.movedim(other_dim, dim)
