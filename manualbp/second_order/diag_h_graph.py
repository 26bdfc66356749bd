"""Where ``diag_h`` equals the diagonal of the generalised Gauss-Newton matrix: the graph check.

The Hessian of L(f(θ)) is the GGN, Jᵀ ∇²L J, plus Σ_k (∂L/∂f_k) ∇²f_k. Its diagonal entry for one scalar
parameter θ_i has the second term Σ_k (∂L/∂f_k) ∂²f_k/∂θ_i², which vanishes when the network is linear in θ_i
alone, almost everywhere: every op on the way from θ_i to the loss is piecewise linear in its input (ReLU, max
pooling, dropout, sums and reshapes) and each parametrised layer is linear in its own parameters (Linear,
convolutions, batch norm with fixed statistics, PReLU, ...). Then ``diag_h`` is ``diag_ggn_exact``, exactly.
For a network with a curved op (sigmoid, tanh, GELU, layer or group norm, softmax, attention) the residual
terms are not propagated and ``diag_h`` raises rather than return the GGN's diagonal in its place.
"""

from __future__ import annotations

import torch

#: manualbp's Functions that are piecewise linear in their input and linear in their own parameters
PIECEWISE_LINEAR_FUNCTIONS = frozenset(
    {
        "LinearFunction",
        "LinearReLUFunction",
        "ReLUMaxPool2dFunction",
        "ConvFunction",
        "ConvTransposeFunction",
        "ReLUFunction",
        "ReLUInplaceFunction",
        "ReLU6Function",
        "ReLU6InplaceFunction",
        "LeakyReLUFunction",
        "LeakyReLUInplaceFunction",
        "PReLUFunction",
        "MaxPoolFunction",
        "AdaptiveMaxPoolFunction",
        "AvgPoolFunction",
        "AdaptiveAvgPoolFunction",
        "FlattenFunction",
        "PermuteFunction",
        "DropoutFunction",
        "DropoutInplaceFunction",
        "BatchNormFunction",  # with fixed statistics: the curvature context refuses batch statistics on entry
        "EmbeddingFunction",
        "LayerScaleFunction",
        "TokenFunction",
        "AddParameterFunction",
        "ConcatFunction",
        "CopyFunction",
    }
)
#: torch's graph nodes that are linear in their input (reshapes, slices, sums, casts)
LINEAR_TORCH_NODES = frozenset(
    {
        "AccumulateGrad",
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "TBackward0",
        "ExpandBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "SqueezeBackward4",
        "UnsqueezeBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "IndexBackward0",
        "CatBackward0",
        "StackBackward0",
        "SplitBackward0",
        "UnbindBackward0",
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "NegBackward0",
        "CloneBackward0",
        "ToCopyBackward0",
        "SumBackward0",
        "SumBackward1",
        "MeanBackward0",
        "MeanBackward1",
    }
)


def check_piecewise_linear(root: torch.autograd.graph.Node) -> None:
    """Raise ValueError naming the first node below ``root`` (the loss's input) that is curved in its input or
    not known to be piecewise linear."""
    seen: set[int] = set()
    stack: list[torch.autograd.graph.Node | None] = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        name = type(node).__name__
        function = name.removesuffix("Backward")
        if function not in PIECEWISE_LINEAR_FUNCTIONS and name not in LINEAR_TORCH_NODES:
            raise ValueError(
                f"the graph holds {name}, whose second derivative manualbp does not propagate; diag_h is computed "
                "where it equals the GGN's diagonal (networks piecewise linear in each parameter: linear and "
                "convolution layers, ReLU-like activations, pooling, dropout, batch norm in eval mode). Ask for "
                "diag_ggn_exact instead"
            )
        stack.extend(fn for fn, _ in node.next_functions)
