"""Linear map followed by ReLU as one Function: y = max(x W^T + b, 0).

Apart, ``linear`` then ``relu`` are two autograd nodes: the ReLU allocates a second (*, out) tensor for
its output and, in backward, a third for dL/d(x W^T + b) before the linear's backward reads it. Fused, the
forward applies the ReLU in place on the affine map's fresh output, and backward masks dL/dy once and
hands it to the linear's gradient formulas. Both keep the same tensors for backward (x, W, and y, which
is the next layer's input anyway).
"""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional.activation import relu_grad
from manualbp.functional.linear import affine, check_linear_args, linear_grads, linear_tangent


@function
class LinearReLUFunction(torch.autograd.Function):
    """y = max(x W^T + b, 0).    x: (*, in)   W: (out, in)   b: (out,) or None   y: (*, out)

    With the mask [y > 0] (computed as sign(y), y ≥ 0; see ``ReLUFunction``) and G = dL/dy ⊙ [y > 0],
    the gradient of the affine map's output:

        dL/dx = G · W          dL/dW = G^T · X  (summed over every leading dim)          dL/db = Σ G

    Forward mode:  ẏ = (ẋ Wᵀ + x Ẇᵀ + ḃ) ⊙ [y > 0]
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return affine(x, weight, bias).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight, output)
        ctx.save_for_forward(x, weight, output)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, y = ctx.saved_tensors
        return linear_grads(ctx, relu_grad(grad_out, y), x, weight)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot):
        x, weight, y = ctx.saved_tensors
        return linear_tangent(x, weight, x_dot, weight_dot, bias_dot) * y.sign()


def linear_relu(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(linear(input, weight, bias))`` as one hand-differentiated op.

    input: (*, in_features)   weight: (out_features, in_features)   bias: (out_features,)   output: (*, out_features)
    """
    check_linear_args("linear_relu", input, weight, bias)
    return apply(LinearReLUFunction, input, weight, bias)
