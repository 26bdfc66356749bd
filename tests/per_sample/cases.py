"""The layer configurations the per-sample tests run on: the built-in op cases of every supported layer
that take a batch (``manualbp.verify.builtin_cases``), and a few more that reach each way of taking a norm."""

from __future__ import annotations

import pytest
import torch

import manualbp.nn as mnn
from manualbp.verify.builtin_cases import BUILTIN_CASES
from manualbp.verify.case_makers import args, classes, fused, randn, twin

#: The built-in cases of the supported layers with a batch dim (BatchNorm: eval mode, running statistics).
_PREFIXES = (
    "linear-",
    "fused-linear_relu-",
    "conv1d-",
    "conv2d-",
    "conv3d-",
    "conv_transpose",
    "group_norm-",
    "instance_norm",  # with affine parameters (the cases without are excluded below)
    "layer_norm2d-",
    "prelu",
    "cn_block",
    "shifted_window_attention",
    "maxvit",
    "layer_norm-",
    "rms_norm-",
    "embedding",
    "batch_norm1d-eval",
    "batch_norm2d-eval",
    # batch-first attention and the layers made of it: every parameter's per-sample gradient, the class token's too
    "multihead_attention-self-batch_first",
    "transformer_encoder_layer-gelu-norm_first-batch_first",
    "transformer_encoder-2layers",
    "vision_transformer-tiny",
)
# max_norm: torch's renorm in place has no vmap rule for the reference; scale_grad_by_freq is refused (it mixes samples)
_EXCLUDED = ("unbatched", "no_running_stats", "no_affine", "max_norm", "scale_grad_by_freq")

EXTRA_CASES = [
    # a sequence, T (O + K) > O K: the norm from the materialised per-sample gradients
    twin("linear-seq10-materialised", "Linear", 3, 2, inputs=args(randn(3, 10, 3))),
    # a short sequence of wide rows, T (O + K) < O K: the ghost norm
    twin("linear-seq2-ghost", "Linear", 8, 8, inputs=args(randn(3, 2, 8))),
    fused("fused-linear_relu-seq3-ghost", lambda: mnn.LinearReLU(9, 7), inputs=args(randn(3, 3, 9))),
    # convolutions: few positions and many features (ghost), many positions (materialised), one position
    twin("conv2d-ghost", "Conv2d", 4, 8, 3, inputs=args(randn(3, 4, 4, 4))),
    twin("conv2d-groups2-ghost", "Conv2d", 4, 8, 3, groups=2, inputs=args(randn(3, 4, 4, 4))),
    twin("conv2d-lenet_like-materialised", "Conv2d", 1, 6, 5, padding=2, inputs=args(randn(3, 1, 8, 8))),
    twin("conv2d-one_position", "Conv2d", 3, 4, 3, inputs=args(randn(3, 3, 3, 3))),
    # transposed convolutions: T = the input's positions, whose patches of dL/dy are cut to L (output_padding >= stride)
    twin("conv_transpose2d-ghost", "ConvTranspose2d", 8, 8, 3, stride=2, inputs=args(randn(3, 8, 2, 2))),
    twin("conv_transpose3d-groups2-ghost", "ConvTranspose3d", 8, 4, 2, groups=2, inputs=args(randn(3, 8, 1, 2, 1))),
    twin(
        "conv_transpose1d-output_padding_past_stride-ghost",
        "ConvTranspose1d",
        8,
        8,
        2,
        stride=2,
        dilation=3,
        output_padding=2,
        inputs=args(randn(3, 8, 2)),
    ),
    twin("conv_transpose1d-one_position", "ConvTranspose1d", 3, 4, 3, stride=2, padding=1, inputs=args(randn(3, 3, 1))),
    # the same ways for 1-d and 3-d convolutions (patches by Tensor.unfold along each dim for the ghost norm)
    twin("conv1d-ghost", "Conv1d", 8, 8, 3, inputs=args(randn(3, 8, 4))),
    twin("conv1d-groups2-ghost", "Conv1d", 8, 16, 3, groups=2, inputs=args(randn(3, 8, 4))),
    twin("conv1d-same-dilated-ghost", "Conv1d", 8, 8, 2, padding="same", dilation=2, inputs=args(randn(3, 8, 3))),
    twin("conv1d-long-materialised", "Conv1d", 1, 2, 3, padding=1, inputs=args(randn(3, 1, 20))),
    twin("conv3d-ghost", "Conv3d", 4, 8, 2, inputs=args(randn(3, 4, 3, 3, 3))),
    twin("conv3d-same-even_kernel-ghost", "Conv3d", 4, 8, 2, padding="same", inputs=args(randn(3, 4, 2, 2, 2))),
    twin(
        "conv3d-strided-dilated-ghost",
        "Conv3d",
        4,
        8,
        2,
        stride=(1, 2, 1),
        dilation=(2, 1, 1),
        padding=(0, 1, 0),
        inputs=args(randn(3, 4, 3, 3, 2)),
    ),
    twin("conv3d-one_position", "Conv3d", 3, 4, 2, inputs=args(randn(3, 3, 2, 2, 2))),
    twin("layer_norm-seq", "LayerNorm", 5, inputs=args(randn(3, 4, 5, scale=2.0, offset=1.0))),
    twin("rms_norm-seq", "RMSNorm", 5, inputs=args(randn(3, 4, 5, scale=2.0, offset=1.0))),
    # BatchNorm3d with running statistics (eval mode), from the registry
    *[c for c in BUILTIN_CASES if c.id == "batch_norm3d-eval"],
    # long sequences over a few rows: each sample's norm sums G over its repeated indices first
    twin("embedding-seq-repeats", "Embedding", 4, 3, inputs=args(classes(3, 12, num_classes=4))),
    twin(
        "embedding-seq-repeats-padding_idx",
        "Embedding",
        4,
        3,
        padding_idx=1,
        inputs=args(classes(3, 12, num_classes=4)),
    ),
]

LAYER_CASES = [c for c in BUILTIN_CASES if c.id.startswith(_PREFIXES) and not any(e in c.id for e in _EXCLUDED)]
LAYER_CASES += EXTRA_CASES
LAYER_PARAMS = [pytest.param(c, id=c.id) for c in LAYER_CASES]

#: Batch-norm cases that normalise with the statistics of the batch: they mix the samples.
MIXING_PARAMS = [
    pytest.param(c, id=c.id)
    for c in BUILTIN_CASES
    if c.id.startswith("batch_norm") and ("train" in c.id or "no_running_stats" in c.id)
]


def batch_input(case, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """A float64 input like the case's first one, with ``batch`` samples (its other dims kept); for integer
    indices (an embedding's), indices drawn from the case's own (a padding index among them)."""
    (x, *_) = case.sample()
    g = torch.Generator().manual_seed(seed)
    if not x.is_floating_point():
        return x.flatten()[torch.randint(0, x.numel(), (batch, *x.shape[1:]), generator=g)]
    return torch.randn((batch, *x.shape[1:]), generator=g, dtype=torch.float64)
