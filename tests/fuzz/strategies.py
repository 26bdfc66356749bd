"""Hypothesis strategies: one valid call of each ``manualbp.functional`` op, beside its torch reference.

``FAMILIES`` maps every public functional op to a strategy of ``FuzzCase``; the fuzz test draws from
each and compares values, first and second derivatives with torch. Adding an op (a new fused op, say)
is one entry there: a strategy that draws the configuration and returns ``op_case(...)``. The strategies of
more layer ops (transposed convolutions, channel norms, prelu, ...) are in ``layer_strategies.py``, merged in.

Hypothesis draws the configuration (shapes, strides, reductions, flags), constructively, so that every
draw is a call torch accepts; the tensor values come from a drawn seed through a ``torch.Generator``,
float64 normal samples (no ties, so max and ReLU kinks are never hit). Drawing values element by element
would be slow and would not find more: the bugs of hand-written backward passes hide in geometry and
options, which is what hypothesis explores and shrinks. Sizes start at 1: the empty tensors on which
manualbp once differed from torch are regression cases in ``test_ops_match_torch.EDGE_CASES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy
from torch.nn.modules.utils import _ntuple
from torchvision.ops import stochastic_depth as torchvision_stochastic_depth

import manualbp.functional as MF
from manualbp.verify.case import seeded
from manualbp.verify.case_makers import math_attention

Sizes = tuple[int, ...]

sides = st.integers(1, 4)
seeds = st.integers(0, 2**32 - 1)
#: input magnitudes: ordinary values, and ones that saturate sigmoid, tanh, softmax and friends
scales = st.sampled_from([1.0, 1e3])
reductions = st.sampled_from(["none", "mean", "sum"])
epsilons = st.sampled_from([1e-5, 1e-3, 0.5])


@dataclass(frozen=True)
class FuzzCase:
    """One drawn call: ``manual(**inputs, **constants)`` must agree with ``reference(**inputs, **constants)``.

    ``inputs``: the float64 tensors to differentiate with respect to.  ``constants``: every other
    keyword argument (class targets, class weights, running statistics, options); the test gives each
    side its own copy of the tensors among them, so in-place updates (running statistics) can be compared.
    ``seed``: the seed of the values, reused for dL/dy and the double-backward probe.
    """

    op: str
    manual: Callable[..., Any]
    reference: Callable[..., Any]
    inputs: dict[str, torch.Tensor]
    constants: dict[str, Any]
    seed: int

    def __repr__(self) -> str:
        arguments = [f"{k}={_describe(v)}" for k, v in {**self.inputs, **self.constants}.items()]
        return f"{self.op}({', '.join(arguments)}; seed={self.seed})"


def _describe(value: Any) -> str:
    """A tensor as its shape (and its values when it holds a few integers), anything else as its repr."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    if not value.is_floating_point() and value.numel() <= 16:
        return f"tensor({value.tolist()})"
    return f"<{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}>"


def op_case(
    op: str,
    seed: int,
    inputs: dict[str, torch.Tensor],
    reference: Callable[..., Any] | None = None,
    manual: Callable[..., Any] | None = None,
    **constants: Any,
) -> FuzzCase:
    """The case for ``manual`` (by default ``manualbp.functional.<op>``) against ``reference`` (by
    default the function of the same name in ``torch.nn.functional``)."""
    return FuzzCase(op, manual or getattr(MF, op), reference or getattr(F, op), inputs, constants, seed)


def _generator(draw: DrawFn) -> tuple[int, torch.Generator]:
    seed = draw(seeds)
    return seed, torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    """A float64 normal sample of ``shape`` times ``scale``."""
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def shapes(min_dims: int = 0, max_dims: int = 4) -> SearchStrategy[tuple[int, ...]]:
    """Tensor shapes of ``min_dims`` to ``max_dims`` dims, each of size 1 to 4."""
    return st.lists(sides, min_size=min_dims, max_size=max_dims).map(tuple)


def _given_as(draw: DrawFn, sizes: Sizes) -> int | Sizes:
    """A per-spatial-dim argument as a caller may write it: an int when all its entries agree (sometimes),
    else the tuple (of one entry for a 1-d op)."""
    return sizes[0] if len(set(sizes)) == 1 and draw(st.booleans()) else sizes


def _sizes(rank: int, low: int, high: int) -> SearchStrategy[Sizes]:
    """``rank`` ints from ``low`` to ``high``: a kernel, stride, dilation or padding, one entry per spatial dim."""
    return st.tuples(*(st.integers(low, high) for _ in range(rank)))


def _spare(rank: int) -> int:
    """How far a drawn spatial size may exceed its smallest valid value: less in 3-d, where sizes multiply."""
    return 5 if rank < 3 else 2


def _batch(draw: DrawFn, channels: int, spatial: list[int], max_batch: int = 3) -> tuple[int, ...]:
    """(N, C, *spatial), or the unbatched (C, *spatial)."""
    batch = draw(st.one_of(st.none(), st.integers(1, max_batch)))
    return ((batch,) if batch else ()) + (channels, *spatial)


# ---------------------------------------------------------------------------------------------------
# linear, activations, shape, dropout


def affine(op: str, reference: Callable[..., Any] | None = None) -> SearchStrategy:
    """An op that starts with y = x Wᵀ + b (``linear`` or a fused op), on 0 to 3 leading dims, bias optional."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        lead, in_features, out_features = draw(shapes(0, 3)), draw(sides), draw(sides)
        inputs = {"input": randn(g, (*lead, in_features)), "weight": randn(g, (out_features, in_features))}
        if draw(st.booleans()):
            inputs["bias"] = randn(g, (out_features,))
        return op_case(op, seed, inputs, reference)

    return draw_case()


def elementwise(
    op: str,
    reference: Callable[..., Any] | None = None,
    in_place: Callable[..., bool] | None = None,
    **options: SearchStrategy,
) -> SearchStrategy:
    """An elementwise activation on a tensor of 0 to 4 dims, with its keyword ``options`` drawn; where
    ``in_place(**options)`` says the drawn options allow it, ``inplace=True`` is drawn too (both sides then
    overwrite a copy of the input, ``on_a_copy``)."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        x = randn(g, draw(shapes()), draw(scales))
        drawn = {k: draw(s) for k, s in options.items()}
        if in_place is not None and in_place(**drawn) and draw(st.booleans()):
            manual, ref = on_a_copy(getattr(MF, op)), on_a_copy(reference or getattr(F, op))
            return op_case(op, seed, {"input": x}, ref, manual, inplace=True, **drawn)
        return op_case(op, seed, {"input": x}, reference, **drawn)

    return draw_case()


def on_a_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(input, ...)`` applied to a copy of ``input`` with the same strides, for an in-place call: autograd
    refuses to overwrite a leaf that requires grad (the drawn inputs are such leaves)."""

    def call(input: torch.Tensor, **kwargs: Any) -> Any:
        copy = torch.empty_strided(input.shape, input.stride(), dtype=input.dtype).copy_(input)
        return fn(copy, **kwargs)

    return call


def always(**_: Any) -> bool:
    return True


def exact_hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """hardsigmoid as relu6(x + 3) / 6 (``inplace`` changes only where torch writes the result): torch's own
    has no double backward ("derivative for aten::hardsigmoid_backward is not implemented"), and its float64
    backward multiplies by 1/6 rounded to float32."""
    return F.relu6(input + 3) / 6


def exact_mish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """mish as x · tanh(softplus(x)) (``inplace`` changes only where torch writes the result): torch's own double
    backward is nan for large x (x = 1540.99: d²/d(dL/dy) nan where the exact value is the slope 1)."""
    return input * torch.tanh(F.softplus(input))


def softmax_like(op: str) -> SearchStrategy:
    """softmax / log_softmax along a drawn dim (negative or not), on logits spread widely or shifted far."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        shape = draw(shapes(1))
        dim = draw(st.integers(-len(shape), len(shape) - 1))
        offset = draw(st.sampled_from([0.0, 1e4, -1e4]))
        return op_case(op, seed, {"input": randn(g, shape, draw(scales)) + offset}, dim=dim)

    return draw_case()


@st.composite
def flatten(draw: DrawFn) -> FuzzCase:
    seed, g = _generator(draw)
    shape = draw(shapes())
    ndim = max(len(shape), 1)  # a 0-d tensor takes dims 0 and -1
    start = draw(st.integers(0, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    start_dim, end_dim = (draw(st.sampled_from([d, d - ndim])) for d in (start, end))
    return op_case("flatten", seed, {"input": randn(g, shape)}, torch.flatten, start_dim=start_dim, end_dim=end_dim)


def dropout(
    op: str, dims: tuple[int, int] = (0, 4), reference: Callable[..., Any] | None = None, **options: SearchStrategy
) -> SearchStrategy:
    """A dropout on an input of ``dims[0]`` to ``dims[1]`` dims: ``dropout`` (elementwise), ``dropout1d/2d/3d``
    (channel-wise; dropout2d's 3-d input is read as (N, C, L), with torch's warnings), ``stochastic_depth``
    (torchvision's, per sample or per batch); p drawn (0 and 1 too), training or not, the other ``options``
    drawn (``inplace``: on a copy, ``on_a_copy``). Both sides run under the same seed, so that on the CPU
    they draw the same mask: each draws it as torch (or torchvision) does."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        x = randn(g, draw(shapes(*dims)))
        p = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)))
        drawn = {k: draw(s) for k, s in options.items()}
        functions = (getattr(MF, op), reference or getattr(F, op))
        manual, ref = (seeded(on_a_copy(f) if drawn.get("inplace") else f, seed) for f in functions)
        return op_case(op, seed, {"input": x}, ref, manual, p=p, training=draw(st.booleans()), **drawn)

    return draw_case()


# ---------------------------------------------------------------------------------------------------
# losses


def _class_layout(draw: DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of class scores and of class-index targets: (C,) and (), or (N, C, d1, ...) and (N, d1, ...)."""
    classes = draw(st.integers(1, 5))
    if draw(st.booleans()):
        return (classes,), ()
    batch, extra = draw(st.integers(1, 4)), draw(st.lists(st.integers(1, 3), max_size=2))
    return (batch, classes, *extra), (batch, *extra)


def _num_classes(scores: tuple[int, ...]) -> int:
    return scores[1] if len(scores) > 1 else scores[0]


def _class_targets(
    draw: DrawFn, g: torch.Generator, scores: tuple[int, ...], shape: tuple[int, ...], reduction: str
) -> dict:
    """Class indices and an ignore_index (torch's default, a negative one, or a real class) that a drawn
    share of the targets carry. With reduction="mean" one target at least still counts: the mean over
    no target is a known difference from torch (``test_known_differences_from_torch``)."""
    classes = _num_classes(scores)
    real_classes = range(classes) if classes > 1 or reduction != "mean" else range(0)
    ignore_index = draw(st.sampled_from([-100, -1, *real_classes]))
    target = torch.randint(0, classes, shape, generator=g)
    ignored = torch.rand(shape, generator=g, dtype=torch.float64) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    target = torch.where(ignored, ignore_index, target)
    if reduction == "mean" and bool((target == ignore_index).all()):
        target.view(-1)[0] = 1 if ignore_index == 0 else 0
    return {"target": target, "ignore_index": ignore_index}


def _class_weight(draw: DrawFn, g: torch.Generator, classes: int) -> dict:
    if not draw(st.booleans()):
        return {}
    return {"weight": torch.rand(classes, generator=g, dtype=torch.float64) + 0.5}


@st.composite
def cross_entropy(draw: DrawFn) -> FuzzCase:
    """Class-index targets (with ignore_index) or class-probability targets (differentiable, like the logits)."""
    seed, g = _generator(draw)
    scores, target_shape = _class_layout(draw)
    inputs = {"input": randn(g, scores, draw(st.sampled_from([1.0, 1e4])))}
    reduction = draw(reductions)
    constants = {
        "reduction": reduction,
        "label_smoothing": draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
        **_class_weight(draw, g, _num_classes(scores)),
    }
    if draw(st.booleans()):
        inputs["target"] = torch.softmax(randn(g, scores), 1 if len(scores) > 1 else 0)
    else:
        constants.update(_class_targets(draw, g, scores, target_shape, reduction))
    return op_case("cross_entropy", seed, inputs, **constants)


@st.composite
def nll_loss(draw: DrawFn) -> FuzzCase:
    seed, g = _generator(draw)
    scores, target_shape = _class_layout(draw)
    reduction = draw(reductions)
    constants = {
        "reduction": reduction,
        **_class_weight(draw, g, _num_classes(scores)),
        **_class_targets(draw, g, scores, target_shape, reduction),
    }
    return op_case("nll_loss", seed, {"input": randn(g, scores)}, **constants)


@st.composite
def mse_loss(draw: DrawFn) -> FuzzCase:
    """Target of the input's shape or one that broadcasts to it (torch warns then, and so does manualbp);
    an optional elementwise weight; input, target and weight all differentiable."""
    seed, g = _generator(draw)
    shape = draw(shapes())
    target_shape = tuple(draw(st.sampled_from([s, 1])) for s in shape)[draw(st.integers(0, len(shape))) :]
    inputs = {"input": randn(g, shape), "target": randn(g, target_shape)}
    if draw(st.booleans()):
        inputs["weight"] = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    return op_case("mse_loss", seed, inputs, reduction=draw(reductions))


# ---------------------------------------------------------------------------------------------------
# convolution and pooling


def _conv_padding(draw: DrawFn, stride: Sizes) -> tuple[str | int | Sizes, Sizes]:
    """A convolution's padding argument (an int, a tuple, "valid", or "same" when every stride is 1) and the
    explicit padding of each spatial dim it stands for, 0 for "same" (which never empties the output)."""
    rank = len(stride)
    kind = draw(st.sampled_from(["int", "tuple", "valid"] + (["same"] if set(stride) == {1} else [])))
    if kind == "int":
        pad = draw(st.integers(0, 2))
        return pad, (pad,) * rank
    if kind == "tuple":
        pads = draw(_sizes(rank, 0, 2))
        return pads, pads
    return kind, (0,) * rank


def conv(rank: int) -> SearchStrategy:
    """conv1d / conv2d / conv3d: any valid geometry: groups, stride, dilation, int/tuple/"valid"/"same" padding
    (same: stride 1 only), an input as small as the dilated kernel allows."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        groups = draw(st.integers(1, 3))
        in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        kernel, stride, dilation = draw(_sizes(rank, 1, 4)), draw(_sizes(rank, 1, 3)), draw(_sizes(rank, 1, 3))
        padding, pads = _conv_padding(draw, stride)
        # the smallest input with a non-empty output
        low = [1 if padding == "same" else max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, pads)]
        spatial = [draw(st.integers(m, m + _spare(rank))) for m in low]
        inputs = {
            "input": randn(g, _batch(draw, in_channels, spatial)),
            "weight": randn(g, (out_channels, in_channels // groups, *kernel)),
        }
        if draw(st.booleans()):
            inputs["bias"] = randn(g, (out_channels,))
        stride, dilation = _given_as(draw, stride), _given_as(draw, dilation)
        return op_case(f"conv{rank}d", seed, inputs, stride=stride, padding=padding, dilation=dilation, groups=groups)

    return draw_case()


def _pool_geometry(
    draw: DrawFn, rank: int, dilated: bool, unpadded_fit: bool = False
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """An input shape and pooling arguments torch accepts: padding at most half the kernel, an input
    at least as large as the padded, dilated kernel (``unpadded_fit``: as the kernel itself, padding
    aside, as torch's avg_pool3d requires); stride None (= the kernel) sometimes."""
    kernel = draw(_sizes(rank, 1, 4))
    stride = draw(st.one_of(st.none(), _sizes(rank, 1, 4)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = draw(_sizes(rank, 1, 3)) if dilated else (1,) * rank
    low = [max(1, d * (k - 1) + 1 - (0 if unpadded_fit else 2 * p)) for d, k, p in zip(dilation, kernel, padding)]
    spatial = [draw(st.integers(m, m + _spare(rank))) for m in low]
    shape = _batch(draw, draw(st.integers(1, 2)), spatial, max_batch=2)
    args = dict(
        kernel_size=_given_as(draw, kernel),
        stride=None if stride is None else _given_as(draw, stride),
        padding=_given_as(draw, padding),
        ceil_mode=draw(st.booleans()),
    )
    if dilated:
        args["dilation"] = _given_as(draw, dilation)
    return shape, args


def max_pool_by_explicit_padding(
    input: torch.Tensor,
    kernel_size: int | Sizes,
    stride: int | Sizes | None = None,
    padding: int | Sizes = 0,
    dilation: int | Sizes = 1,
    ceil_mode: bool = False,
    *,
    rank: int,
) -> torch.Tensor:
    """torch's max_pool{rank}d where some window holds padding only (its value -inf): torch's own backward
    writes out of bounds there, so this reference pools the input padded with -inf (and enough -inf on
    the far side for ceil_mode windows) without implicit padding, cropped to torch's output size."""
    pool, as_tuple = getattr(F, f"max_pool{rank}d"), _ntuple(rank)
    kernel, step, dil, pads = (as_tuple(a) for a in (kernel_size, stride or kernel_size, dilation, padding))
    out = pool(input.detach(), kernel_size, stride, padding, dilation, ceil_mode).shape[input.dim() - rank :]
    far = [p + d * (k - 1) + s for p, d, k, s in zip(pads, dil, kernel, step)]
    padded = F.pad(input, [side for i in reversed(range(rank)) for side in (pads[i], far[i])], value=float("-inf"))
    return pool(padded, kernel, step, 0, dil)[(..., *(slice(size) for size in out))]


#: the 2-d reference, as tests/functional imports it
max_pool2d_by_explicit_padding = partial(max_pool_by_explicit_padding, rank=2)


def max_pool(rank: int) -> SearchStrategy:
    """Padding, dilation and ceil_mode together leave windows that hold padding only: those compare with
    ``max_pool_by_explicit_padding``; the others with torch's own, indices included."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        op = f"max_pool{rank}d"
        shape, args = _pool_geometry(draw, rank, dilated=True)
        x = randn(g, shape)
        if getattr(F, op)(torch.zeros(shape), **args).isinf().any():
            return op_case(op, seed, {"input": x}, partial(max_pool_by_explicit_padding, rank=rank), **args)
        return op_case(op, seed, {"input": x}, return_indices=draw(st.booleans()), **args)

    return draw_case()


def avg_pool(rank: int) -> SearchStrategy:
    """count_include_pad drawn, and divisor_override where torch has it (not in 1-d)."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        shape, args = _pool_geometry(draw, rank, dilated=False, unpadded_fit=rank == 3)
        args.update(count_include_pad=draw(st.booleans()))
        if rank > 1:
            args.update(divisor_override=draw(st.one_of(st.none(), st.integers(1, 7))))
        return op_case(f"avg_pool{rank}d", seed, {"input": randn(g, shape)}, **args)

    return draw_case()


def adaptive_pool(kind: str, rank: int) -> SearchStrategy:
    """adaptive_{kind}_pool{rank}d: output sizes below, equal to and above the input's, an int or a tuple; in 2-d
    and 3-d a None entry keeps that input dimension; max pools with or without their indices."""

    @st.composite
    def draw_case(draw: DrawFn) -> FuzzCase:
        seed, g = _generator(draw)
        largest = 9 if rank < 3 else 5
        spatial = [draw(st.integers(1, largest)) for _ in range(rank)]
        shape = _batch(draw, draw(st.integers(1, 2)), spatial, max_batch=2)
        size = st.integers(1, largest) if rank == 1 else st.one_of(st.none(), st.integers(1, largest))
        options: dict[str, Any] = dict(output_size=draw(st.one_of(st.integers(1, largest), st.tuples(*[size] * rank))))
        if kind == "max":
            options.update(return_indices=draw(st.booleans()))
        return op_case(f"adaptive_{kind}_pool{rank}d", seed, {"input": randn(g, shape)}, **options)

    return draw_case()


# ---------------------------------------------------------------------------------------------------
# normalization


def torch_batch_norm(
    input: torch.Tensor, *args: Any, weight: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    """torch's batch_norm, with a constant weight of ones for a bias without a weight: there torch 2.14's
    double backward fails ("Expected a proper Tensor but got None ... for argument #1 'other'")."""
    if weight is None and kwargs.get("bias") is not None:
        weight = input.new_ones(input.shape[1])
    return F.batch_norm(input, *args, weight=weight, **kwargs)


def torch_layer_norm(
    input: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    """torch's layer_norm, with a constant weight of ones for a bias without a weight (as ``torch_batch_norm``)."""
    if weight is None and kwargs.get("bias") is not None:
        weight = input.new_ones(normalized_shape)
    return F.layer_norm(input, normalized_shape, weight=weight, **kwargs)


@st.composite
def batch_norm(draw: DrawFn) -> FuzzCase:
    """Training (batch statistics, running estimates updated when given) or evaluation (running estimates),
    on (N, C) or (N, C, d1, ...); weight and bias optional, each on its own."""
    seed, g = _generator(draw)
    training = draw(st.booleans())
    channels, spatial = draw(st.integers(1, 3)), draw(st.lists(st.integers(1, 3), max_size=2))
    one_per_channel = training and all(s == 1 for s in spatial)  # training needs 2+ values per channel
    shape = (draw(st.integers(2 if one_per_channel else 1, 4)), channels, *spatial)
    inputs = {"input": randn(g, shape, draw(st.sampled_from([1.0, 1e3])))}
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            inputs[name] = randn(g, (channels,))
    running = not training or draw(st.booleans())
    constants = dict(
        running_mean=randn(g, (channels,)) if running else None,
        running_var=torch.rand(channels, generator=g, dtype=torch.float64) + 0.5 if running else None,
        training=training,
        momentum=draw(st.floats(0.0, 1.0)),
        eps=draw(epsilons),
    )
    return op_case("batch_norm", seed, inputs, torch_batch_norm, **constants)


@st.composite
def layer_norm(draw: DrawFn) -> FuzzCase:
    seed, g = _generator(draw)
    shape = draw(shapes(1))
    normalized_shape = shape[len(shape) - draw(st.integers(1, len(shape))) :]
    inputs = {"input": randn(g, shape, draw(st.sampled_from([1.0, 1e3])))}
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            inputs[name] = randn(g, normalized_shape)
    constants = dict(normalized_shape=normalized_shape, eps=draw(epsilons))
    return op_case("layer_norm", seed, inputs, torch_layer_norm, **constants)


@st.composite
def rms_norm(draw: DrawFn) -> FuzzCase:
    """Over 1 to all of the input's trailing dims; weight optional; eps drawn, or None (the dtype's epsilon)."""
    seed, g = _generator(draw)
    shape = draw(shapes(1))
    normalized_shape = shape[len(shape) - draw(st.integers(1, len(shape))) :]
    inputs = {"input": randn(g, shape, draw(scales))}
    if draw(st.booleans()):
        inputs["weight"] = randn(g, normalized_shape)
    constants = dict(normalized_shape=normalized_shape, eps=draw(st.one_of(st.none(), epsilons)))
    return op_case("rms_norm", seed, inputs, **constants)


# ---------------------------------------------------------------------------------------------------
# embedding


def torch_embedding(
    input: torch.Tensor, weight: torch.Tensor, scale_grad_by_freq: bool = False, **kwargs: Any
) -> torch.Tensor:
    """torch's embedding. With scale_grad_by_freq, the same value and gradient from the lookup plus a term that
    moves only the gradient, y = W[idx] / c + (W[idx] - W[idx] / c).detach() with c each index's count: torch
    2.14's double backward of embedding drops the scaling (its derivative in dL/dy is the unscaled scatter)."""
    rows = F.embedding(input, weight, **kwargs)
    if not scale_grad_by_freq:
        return rows
    counts = torch.bincount(input.flatten(), minlength=weight.shape[0])[input].unsqueeze(-1).to(rows.dtype)
    scaled = rows / counts
    return scaled + (rows - scaled).detach()


@st.composite
def embedding(draw: DrawFn) -> FuzzCase:
    """Indices of 0 to 3 dims (repeats likely: a table of 1 to 6 rows), padding_idx (negative or not),
    max_norm with its norm_type, scale_grad_by_freq."""
    seed, g = _generator(draw)
    rows = draw(st.integers(1, 6))
    indices = torch.randint(0, rows, draw(shapes(0, 3)), generator=g)
    constants: dict[str, Any] = dict(
        input=indices,
        padding_idx=draw(st.one_of(st.none(), st.integers(-rows, rows - 1))),
        scale_grad_by_freq=draw(st.booleans()),
    )
    if draw(st.booleans()):
        constants.update(max_norm=draw(st.sampled_from([0.5, 1.0, 2.0])), norm_type=draw(st.sampled_from([1.0, 2.0])))
    return op_case("embedding", seed, {"weight": randn(g, (rows, draw(sides)))}, torch_embedding, **constants)


# ---------------------------------------------------------------------------------------------------
# fused ops: compared with the torch ops they fuse


def relu_then_max_pool2d(input: torch.Tensor, **args: Any) -> torch.Tensor:
    return F.max_pool2d(F.relu(input), **args)


def linear_then_relu(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.relu(F.linear(input, weight, bias))


@st.composite
def relu_max_pool2d(draw: DrawFn) -> FuzzCase:
    seed, g = _generator(draw)
    shape, args = _pool_geometry(draw, 2, dilated=False)
    return op_case("relu_max_pool2d", seed, {"input": randn(g, shape)}, relu_then_max_pool2d, **args)


# ---------------------------------------------------------------------------------------------------
# attention: compared with torch's math path (its fused CPU kernel has no double backward)


def _broadcast_to(draw: DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape`` without enlarging it: some leading dims dropped, some others 1."""
    kept = shape[draw(st.integers(0, max(len(shape) - 2, 0))) :]
    return tuple(size if draw(st.booleans()) else 1 for size in kept)


@st.composite
def attention_calls(draw: DrawFn) -> FuzzCase:
    """scaled_dot_product_attention: 0 to 2 batch dims and a heads dim (or 2-D inputs), key/value batch dims
    broadcast (size 1) or not, grouped-query heads, L, S, E, Eᵥ from 1 to 4; no mask, a boolean or a float mask
    broadcast over some dims (a float one sometimes differentiated), or is_causal; the default or a drawn scale."""
    seed, g = _generator(draw)
    L, S, E, Ev = (draw(sides) for _ in range(4))
    gqa = draw(st.booleans())
    heads = draw(sides)
    lead = (*draw(shapes(0, 2)), heads) if gqa or draw(st.booleans()) else ()
    kv_lead = tuple(size if draw(st.booleans()) else 1 for size in lead)
    if gqa:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        key_lead, value_lead = ((*kv_lead[:-1], draw(st.sampled_from(divisors))) for _ in range(2))
    else:
        key_lead = value_lead = kv_lead
    scale = draw(scales)
    inputs = {
        "query": randn(g, (*lead, L, E), scale),
        "key": randn(g, (*key_lead, S, E)),
        "value": randn(g, (*value_lead, S, Ev)),
    }
    constants: dict[str, Any] = dict(enable_gqa=gqa)
    kind = draw(st.sampled_from(["none", "bool", "float", "causal"]))
    scores_shape = (*torch.broadcast_shapes(lead, key_lead if not gqa else (*key_lead[:-1], heads)), L, S)
    if kind == "causal":
        constants["is_causal"] = True
    elif kind == "bool":
        constants["attn_mask"] = torch.rand(_broadcast_to(draw, scores_shape), generator=g) < 0.7
    elif kind == "float":
        mask = randn(g, _broadcast_to(draw, scores_shape))
        if draw(st.booleans()):
            inputs["attn_mask"] = mask
        else:
            constants["attn_mask"] = mask
    if draw(st.booleans()):
        constants["scale"] = draw(st.floats(0.1, 2.0))
    return op_case("scaled_dot_product_attention", seed, inputs, math_attention, **constants)


#: one strategy per public op of manualbp.functional (the test checks that none is missing)
# ---------------------------------------------------------------------------------------------------
# parameters every sample uses (tokens, position embeddings, a packed bias) and attention's weights


def torch_cat_token(input: torch.Tensor, token: torch.Tensor, first: bool = True) -> torch.Tensor:
    row = token.reshape(1, 1, -1).expand(input.shape[0], 1, input.shape[2])
    return torch.cat((row, input) if first else (input, row), dim=1)


@st.composite
def cat_token(draw: DrawFn) -> FuzzCase:
    """A (N, T, D) batch and a token of D values shaped (D,), (1, D) or (1, 1, D), put first or last."""
    seed, g = _generator(draw)
    n, t, d = draw(sides), draw(sides), draw(sides)
    token_shape = draw(st.sampled_from([(d,), (1, d), (1, 1, d)]))
    inputs = {"input": randn(g, (n, t, d)), "token": randn(g, token_shape)}
    return op_case("cat_token", seed, inputs, torch_cat_token, first=draw(st.booleans()))


@st.composite
def add_parameter(draw: DrawFn) -> FuzzCase:
    """input + parameter, the parameter broadcast over the batch and some other dims (size 1 or dropped)."""
    seed, g = _generator(draw)
    shape = draw(shapes(1))
    parameter_shape = (1, *_broadcast_to(draw, shape[1:])) if draw(st.booleans()) else _broadcast_to(draw, shape[1:])
    inputs = {"input": randn(g, shape), "parameter": randn(g, parameter_shape)}
    return op_case("add_parameter", seed, inputs, lambda input, parameter: input + parameter)


def torch_add_packed_bias(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    b_q, b_k, b_v = bias.chunk(3)
    return q + b_q, k + b_k, v + b_v


@st.composite
def add_packed_bias(draw: DrawFn) -> FuzzCase:
    seed, g = _generator(draw)
    n, target, source, e = draw(sides), draw(sides), draw(sides), draw(sides)
    inputs = {
        "q": randn(g, (n, target, e)),
        "k": randn(g, (n, source, e)),
        "v": randn(g, (n, source, e)),
        "bias": randn(g, (3 * e,)),
    }
    return op_case("add_packed_bias", seed, inputs, torch_add_packed_bias)


def torch_attention_weights(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    scores = query @ key.transpose(-2, -1) * (query.shape[-1] ** -0.5 if scale is None else scale)
    return torch.softmax(scores if mask is None else scores + mask, dim=-1)


@st.composite
def attention_weights(draw: DrawFn) -> FuzzCase:
    """0 to 2 batch dims, an additive mask broadcast to the scores (differentiated too) or none, scale drawn."""
    seed, g = _generator(draw)
    batch, target, source, e = draw(shapes(0, 2)), draw(sides), draw(sides), draw(sides)
    inputs = {"query": randn(g, (*batch, target, e), draw(scales)), "key": randn(g, (*batch, source, e))}
    if draw(st.booleans()):
        inputs["mask"] = randn(g, _broadcast_to(draw, (*batch, target, source)))
    return op_case("attention_weights", seed, inputs, torch_attention_weights, scale=draw(st.sampled_from([None, 0.5])))


FAMILIES: dict[str, SearchStrategy[FuzzCase]] = {
    "linear": affine("linear"),
    "relu": elementwise("relu", in_place=always),
    "relu6": elementwise("relu6", in_place=always),
    # in place, the sign of x is recovered from y only for a slope >= 0 (torch's rule too)
    "leaky_relu": elementwise(
        "leaky_relu", in_place=lambda negative_slope: negative_slope >= 0, negative_slope=st.floats(-2.0, 2.0)
    ),
    "elu": elementwise("elu", in_place=always, alpha=st.floats(0.0, 3.0)),
    "sigmoid": elementwise("sigmoid", torch.sigmoid),
    "tanh": elementwise("tanh", torch.tanh),
    "gelu": elementwise("gelu", approximate=st.sampled_from(["none", "tanh"])),
    "silu": elementwise("silu", in_place=always),
    "hardsigmoid": elementwise("hardsigmoid", exact_hardsigmoid, in_place=always),
    "hardswish": elementwise("hardswish", in_place=always),
    "selu": elementwise("selu", in_place=always),
    "celu": elementwise("celu", in_place=always, alpha=st.floats(0.1, 3.0)),
    "mish": elementwise("mish", exact_mish, in_place=always),
    "softplus": elementwise("softplus", beta=st.floats(0.1, 3.0), threshold=st.floats(0.5, 30.0)),
    "logsigmoid": elementwise("logsigmoid"),
    "softsign": elementwise("softsign"),
    "softmax": softmax_like("softmax"),
    "log_softmax": softmax_like("log_softmax"),
    "flatten": flatten(),
    "dropout": dropout("dropout", inplace=st.booleans()),
    "dropout1d": dropout("dropout1d", (2, 3), inplace=st.booleans()),
    "dropout2d": dropout("dropout2d", (3, 4), inplace=st.booleans()),
    "dropout3d": dropout("dropout3d", (4, 5), inplace=st.booleans()),
    "stochastic_depth": dropout(
        "stochastic_depth", (1, 4), torchvision_stochastic_depth, mode=st.sampled_from(["batch", "row"])
    ),
    "cross_entropy": cross_entropy(),
    "nll_loss": nll_loss(),
    "mse_loss": mse_loss(),
    **{f"conv{rank}d": conv(rank) for rank in (1, 2, 3)},
    **{f"max_pool{rank}d": max_pool(rank) for rank in (1, 2, 3)},
    **{f"avg_pool{rank}d": avg_pool(rank) for rank in (1, 2, 3)},
    **{f"adaptive_{kind}_pool{rank}d": adaptive_pool(kind, rank) for kind in ("avg", "max") for rank in (1, 2, 3)},
    "batch_norm": batch_norm(),
    "layer_norm": layer_norm(),
    "rms_norm": rms_norm(),
    "embedding": embedding(),
    "relu_max_pool2d": relu_max_pool2d(),
    "linear_relu": affine("linear_relu", linear_then_relu),
    "scaled_dot_product_attention": attention_calls(),
    "cat_token": cat_token(),
    "add_parameter": add_parameter(),
    "add_packed_bias": add_packed_bias(),
    "attention_weights": attention_weights(),
}

# the layer families of their own module, which imports this one's helpers: so imported last
from tests.fuzz.layer_strategies import LAYER_FAMILIES  # noqa: E402

FAMILIES.update(LAYER_FAMILIES)
