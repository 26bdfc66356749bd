"""Hypothesis strategies for more layer ops of ``manualbp.functional``: transposed convolutions, the channel norms
(group, instance, channels-first layer norm), prelu, layer_scale, normalize and permute; each one valid call
beside its torch reference, as the ``FuzzCase``s of ``strategies.py``.

``LAYER_FAMILIES`` maps each op to its strategy; ``strategies.FAMILIES`` takes them all in (import ``FAMILIES``
from there: this module needs that one's helpers first).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy

from tests.fuzz.strategies import (
    FuzzCase,
    _batch,
    _broadcast_to,
    _generator,
    _given_as,
    _sizes,
    _spare,
    epsilons,
    op_case,
    randn,
    scales,
    shapes,
    torch_layer_norm,
)

channels = st.integers(1, 3)

# ---------------------------------------------------------------------------------------------------
# transposed convolution


def conv_transpose(rank: int) -> SearchStrategy:
    """conv_transpose1d / 2d / 3d: groups, stride, dilation, output_padding < max(stride, dilation), padding (an
    int or a tuple), an input as small as a non-empty output allows; bias optional."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        groups = draw(st.integers(1, 3))
        in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        kernel, stride, dilation = draw(_sizes(rank, 1, 4)), draw(_sizes(rank, 1, 3)), draw(_sizes(rank, 1, 3))
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        padding = draw(_sizes(rank, 0, 2))
        # output size (L - 1)·s - 2p + d(k - 1) + output_padding + 1 >= 1
        low = [
            1 + max(0, -(-(2 * p - d * (k - 1) - o) // s))
            for p, d, k, o, s in zip(padding, dilation, kernel, output_padding, stride)
        ]
        spatial = [draw(st.integers(m, m + _spare(rank))) for m in low]
        inputs = {
            "input": randn(g, _batch(draw, in_channels, spatial)),
            "weight": randn(g, (in_channels, out_channels // groups, *kernel)),
        }
        if draw(st.booleans()):
            inputs["bias"] = randn(g, (out_channels,))
        options = dict(
            stride=_given_as(draw, stride),
            padding=_given_as(draw, padding),
            output_padding=_given_as(draw, output_padding),
            groups=groups,
            dilation=_given_as(draw, dilation),
        )
        return op_case(f"conv_transpose{rank}d", seed, inputs, **options)

    return draw_case()


# ---------------------------------------------------------------------------------------------------
# normalization over channels


def _affine(draw: DrawFn, g: torch.Generator, size: int) -> dict[str, torch.Tensor]:
    """A weight and a bias of ``size`` entries, each optional on its own."""
    return {name: randn(g, (size,)) for name in ("weight", "bias") if draw(st.booleans())}


def torch_instance_norm(
    input: torch.Tensor, weight: torch.Tensor | None = None, batched: bool = True, **kwargs: Any
) -> torch.Tensor:
    """torch's instance_norm, with a constant weight of ones for a bias without a weight (as
    ``strategies.torch_batch_norm``: the same failure of torch's double backward); one sample (C, *)
    (manualbp's ``batched=False``) as a batch of one, as torch's InstanceNorm layers take it."""
    if weight is None and kwargs.get("bias") is not None:
        weight = input.new_ones(input.shape[1 if batched else 0])
    x = input if batched else input.unsqueeze(0)
    y = F.instance_norm(x, weight=weight, **kwargs)
    return y if batched else y.squeeze(0)


def torch_channels_first_layer_norm(
    input: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """torchvision's LayerNorm2d: layer_norm over the channels of the input permuted to (N, *, C), permuted back."""
    moved = input.movedim(1, -1)
    return torch_layer_norm(moved, (moved.shape[-1],), weight=weight, bias=bias, eps=eps).movedim(-1, 1)


@st.composite
def group_norm(draw: DrawFn) -> FuzzCase:
    """(N, C, *) with 0 to 2 spatial dims, C a multiple of num_groups, weight and bias optional each, eps drawn;
    a group may hold one value per sample where the batch holds several (torch's condition)."""
    seed, g = _generator(draw)
    num_groups, per_group, spatial = draw(channels), draw(st.integers(1, 2)), draw(shapes(0, 2))
    one_per_group = per_group * torch.Size(spatial).numel() == 1  # torch needs 2+ values per group in the batch
    shape = (draw(st.integers(2 if one_per_group else 1, 3)), num_groups * per_group, *spatial)
    inputs = {"input": randn(g, shape, draw(scales)), **_affine(draw, g, shape[1])}
    return op_case("group_norm", seed, inputs, num_groups=num_groups, eps=draw(epsilons))


@st.composite
def instance_norm(draw: DrawFn) -> FuzzCase:
    """(N, C, *) or one sample (C, *) (``batched=False``), 1 to 3 spatial dims; input statistics (over 2+
    spatial values, as torch requires), running estimates updated when given, or the running estimates alone
    (``use_input_stats=False``); weight and bias optional each; momentum and eps drawn."""
    seed, g = _generator(draw)
    use_input_stats, batched = draw(st.booleans()), draw(st.booleans())
    spatial = draw(shapes(1, 3).filter(lambda s: not use_input_stats or torch.Size(s).numel() > 1))
    c = draw(channels)
    shape = (draw(channels), c, *spatial) if batched else (c, *spatial)
    inputs = {"input": randn(g, shape, draw(scales)), **_affine(draw, g, c)}
    running = not use_input_stats or draw(st.booleans())
    constants = dict(
        running_mean=randn(g, (c,)) if running else None,
        running_var=torch.rand(c, generator=g, dtype=torch.float64) + 0.5 if running else None,
        use_input_stats=use_input_stats,
        momentum=draw(st.floats(0.0, 1.0)),
        eps=draw(epsilons),
        batched=batched,
    )
    return op_case("instance_norm", seed, inputs, torch_instance_norm, **constants)


@st.composite
def channels_first_layer_norm(draw: DrawFn) -> FuzzCase:
    """(N, C, *) with 0 to 2 spatial dims; weight and bias (C,) optional each; eps drawn."""
    seed, g = _generator(draw)
    shape = (draw(channels), draw(channels), *draw(shapes(0, 2)))
    inputs = {"input": randn(g, shape, draw(scales)), **_affine(draw, g, shape[1])}
    return op_case("channels_first_layer_norm", seed, inputs, torch_channels_first_layer_norm, eps=draw(epsilons))


@st.composite
def normalize(draw: DrawFn) -> FuzzCase:
    """p = 2 (manualbp's only) along a drawn dim, negative or not; eps drawn, and inputs small enough that the
    eps floor acts on some norms."""
    seed, g = _generator(draw)
    shape = draw(shapes(1))
    x = randn(g, shape, draw(st.sampled_from([1e-3, 1.0, 1e3])))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    return op_case("normalize", seed, {"input": x}, p=2.0, dim=dim, eps=draw(st.sampled_from([1e-12, 1e-3, 0.5])))


# ---------------------------------------------------------------------------------------------------
# learnable slopes and scales, permutation


@st.composite
def prelu(draw: DrawFn) -> FuzzCase:
    """A tensor of 0 to 4 dims with one slope, (1,) or (), or, from 2 dims on, one per channel (dim 1)."""
    seed, g = _generator(draw)
    shape = draw(shapes())
    weight_shapes = [(1,), ()] + ([(shape[1],)] if len(shape) >= 2 else [])
    inputs = {"input": randn(g, shape, draw(scales)), "weight": randn(g, draw(st.sampled_from(weight_shapes)))}
    return op_case("prelu", seed, inputs)


def torch_layer_scale(input: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * input


@st.composite
def layer_scale(draw: DrawFn) -> FuzzCase:
    """γ ⊙ x, γ broadcast over some leading dims of x (dropped) and some others (size 1): ConvNeXt's (C, 1, 1)."""
    seed, g = _generator(draw)
    shape = draw(shapes())
    inputs = {"input": randn(g, shape), "scale": randn(g, _broadcast_to(draw, shape))}
    return op_case("layer_scale", seed, inputs, torch_layer_scale)


@st.composite
def permute(draw: DrawFn) -> FuzzCase:
    """A permutation of the 0 to 4 dims of a tensor, each dim given as a negative index sometimes."""
    seed, g = _generator(draw)
    shape = draw(shapes())
    order = draw(st.permutations(range(len(shape))))
    dims = tuple(d - len(shape) if draw(st.booleans()) else d for d in order)
    return op_case("permute", seed, {"input": randn(g, shape)}, torch.permute, dims=dims)


LAYER_FAMILIES: dict[str, SearchStrategy[FuzzCase]] = {
    **{f"conv_transpose{rank}d": conv_transpose(rank) for rank in (1, 2, 3)},
    "group_norm": group_norm(),
    "instance_norm": instance_norm(),
    "channels_first_layer_norm": channels_first_layer_norm(),
    "normalize": normalize(),
    "prelu": prelu(),
    "layer_scale": layer_scale(),
    "permute": permute(),
}
