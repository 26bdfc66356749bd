"""Digit classifiers built from manualbp.nn (hand-written backward) or torch.nn (autograd): ``mlp``,
``lenet5``, ``recurrent`` (an RNN, LSTM or GRU reading the image row by row) and ``vit`` (a vision transformer).

Both backends build the same ``torch.nn.Sequential`` with the same parameter names; since every manualbp
layer initialises exactly as its torch twin, the same seed gives the same weights on both. The layer
names are the same too, except that with ReLU the manual backend fuses each ReLU into the layer before it
(``manualbp.nn.LinearReLU``) or the max pool after it (``manualbp.nn.ReLUMaxPool2d``), so its ``act<i>``
layers are gone; neither fusion has parameters of its own, so the state dicts of both backends match.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, ClassVar, Literal

import torch

import manualbp
import manualbp.functional
import manualbp.nn
from manualbp.functional._dispatch import function
from manualbp.functional._validation import check_int

Backend = Literal["manual", "autograd"]
Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid"]
Cell = Literal["rnn", "lstm", "gru"]

_ACTIVATIONS = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "gelu": "GELU",
    "silu": "SiLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
}

_CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def layers(backend: Backend) -> ModuleType:
    """The namespace the layers come from: ``manualbp.nn`` or ``torch.nn``."""
    if backend == "manual":
        return manualbp.nn
    if backend == "autograd":
        return torch.nn
    raise ValueError(f"backend must be 'manual' or 'autograd', got {backend!r}")


def cross_entropy(backend: Backend) -> Callable[..., torch.Tensor]:
    """The backend's cross entropy: manualbp's hand-written one, so that no native autograd node sits
    between the loss and the parameters, or torch's."""
    layers(backend)  # validates the name
    return manualbp.functional.cross_entropy if backend == "manual" else torch.nn.functional.cross_entropy


def _activation(nn: ModuleType, name: str) -> torch.nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return getattr(nn, _ACTIVATIONS[name])()


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
        raise ValueError(f"in_shape must be (channels, height, width) with positive sizes, got {tuple(in_shape)}")
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


def mlp(
    hidden: Sequence[int] = (800,),
    activation: Activation = "relu",
    dropout: float = 0.0,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    backend: Backend = "manual",
) -> torch.nn.Sequential:
    """Flatten -> [Linear -> activation (-> Dropout)] per hidden width -> Linear to ``num_classes`` logits.

    Layers: ``flatten``, ``fc1``, ``act1``, (``drop1``), ..., ``out``. Input (N, *in_shape), output (N, num_classes).
    With ``backend="manual"`` and ``activation="relu"`` each ``act<i>`` is fused into ``fc<i>`` (``manualbp.nn.LinearReLU``).
    """
    nn = layers(backend)
    c, h, w = _check_in_shape(in_shape)
    if not all(isinstance(size, int) and size >= 1 for size in hidden):
        raise ValueError(f"mlp: hidden widths must be positive ints, got {list(hidden)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"mlp: dropout must lie in [0, 1), got {dropout}")
    modules: list[tuple[str, torch.nn.Module]] = [("flatten", nn.Flatten())]
    width = c * h * w
    for i, size in enumerate(hidden, start=1):
        modules.extend(_linear_and_activation(nn, width, size, activation, str(i)))
        if dropout > 0:
            modules.append((f"drop{i}", nn.Dropout(dropout)))
        width = size
    modules.append(("out", nn.Linear(width, num_classes)))
    return torch.nn.Sequential(OrderedDict(modules))


def _linear_and_activation(
    nn: ModuleType, in_features: int, out_features: int, activation: str, suffix: str, act_suffix: str | None = None
) -> list[tuple[str, torch.nn.Module]]:
    """``fc<suffix>`` then ``act<act_suffix>`` (default: the same suffix); on the manual backend a Linear and a
    ReLU are one layer, ``fc<suffix>`` = ``manualbp.nn.LinearReLU``, which masks dL/dy once in backward instead
    of a separate ReLU node. It has Linear's parameters, so the state dicts of both backends stay the same."""
    if nn is manualbp.nn and activation == "relu":
        return [(f"fc{suffix}", nn.LinearReLU(in_features, out_features))]
    return [
        (f"fc{suffix}", nn.Linear(in_features, out_features)),
        (f"act{act_suffix or suffix}", _activation(nn, activation)),
    ]


def _activation_and_pool(nn: ModuleType, activation: str, suffix: str) -> list[tuple[str, torch.nn.Module]]:
    """``act<suffix>`` then a 2x2 max pool ``pool<suffix>``; on the manual backend a ReLU and the pool are
    one layer, ``pool<suffix>`` = ``manualbp.nn.ReLUMaxPool2d(2)``, which keeps the pooling indices and its
    output (the next layer's input) for backward, not the ReLU's output. Neither has parameters, so
    the state dicts of both backends stay the same."""
    if nn is manualbp.nn and activation == "relu":
        return [(f"pool{suffix}", nn.ReLUMaxPool2d(2))]
    return [(f"act{suffix}", _activation(nn, activation)), (f"pool{suffix}", nn.MaxPool2d(2))]


def lenet5(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    activation: Activation = "relu",
    backend: Backend = "manual",
) -> torch.nn.Sequential:
    """LeNet-5 with max pooling: conv 5x5 -> 6 (padding 2), pool 2, conv 5x5 -> 16, pool 2, fc 120, fc 84, classes.

    On 28x28 the second conv sees 14x14 and leaves 5x5x16 = 400 features, as in the original. On inputs
    too small for an unpadded 5x5 conv after the first pool (below 20x20, e.g. 8x8 digits) the second
    conv pads by 2 as well, so the shapes stay valid: 8x8 -> 4x4 -> 4x4 -> 2x2x16 = 64 features.

    Layers: ``conv1``, ``act1``, ``pool1``, ``conv2``, ``act2``, ``pool2``, ``flatten``, ``fc1``, ``act3``,
    ``fc2``, ``act4``, ``out``; with ``backend="manual"`` and ``activation="relu"``, ``act3``/``act4`` are fused into
    ``fc1``/``fc2`` (``manualbp.nn.LinearReLU``) and ``act1``/``act2`` are
    fused into ``pool1``/``pool2`` (``manualbp.nn.ReLUMaxPool2d``). Parameter names are the same on both.
    """
    nn = layers(backend)
    c, h, w = _check_in_shape(in_shape)
    h1, w1 = h // 2, w // 2
    if min(h1, w1) < 1:
        raise ValueError(f"lenet5 needs inputs of at least 2x2, got in_shape {tuple(in_shape)}")
    pad2 = 0 if min(h1, w1) >= 10 else 2
    h2, w2 = (h1 + 2 * pad2 - 4) // 2, (w1 + 2 * pad2 - 4) // 2
    if min(h2, w2) < 1:
        raise ValueError(f"lenet5: in_shape {tuple(in_shape)} leaves no pixels after the second pooling")
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(c, 6, 5, padding=2)),
                *_activation_and_pool(nn, activation, "1"),
                ("conv2", nn.Conv2d(6, 16, 5, padding=pad2)),
                *_activation_and_pool(nn, activation, "2"),
                ("flatten", nn.Flatten()),
                *_linear_and_activation(nn, 16 * h2 * w2, 120, activation, "1", act_suffix="3"),
                *_linear_and_activation(nn, 120, 84, activation, "2", act_suffix="4"),
                ("out", nn.Linear(84, num_classes)),
            ]
        )
    )


class ImageRows(torch.nn.Module):
    """Images (N, C, H, W) as sequences (N, H, C·W): step t is pixel row t, the C channels' rows side by side.

    A plain view (a copy when C > 1) on both backends, no manual op: images are data and do not require grad,
    so autograd records nothing here (and were they to, the node would sit between the images and the
    network, not between the loss and the parameters).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        return images.transpose(1, 2).reshape(n, h, c * w)


def _last_states(h_n: torch.Tensor, directions: int) -> torch.Tensor:
    """(num_layers·directions, N, H) -> (N, directions·H): the last layer's entries, side by side."""
    return h_n[-directions:].transpose(0, 1).reshape(h_n.shape[1], -1)


@function
class LastStatesFunction(torch.autograd.Function):
    """y = the last layer's final states of h_n side by side.   h_n: (L·D, N, H)   y: (N, D·H)

    y[:, d·H:(d+1)·H] = h_n[(L-1)·D + d]   (D directions, forward first)

    dL/dh_n = 0 for the first L-1 layers, dL/dy's D blocks for the last one      ẏ = ḣ_n taken alike

    Lives here rather than in ``manualbp.functional`` because only this classifier's head uses it; it keeps
    the manual backend free of native autograd nodes between the loss and the recurrent layer.
    """

    generate_vmap_rule = True
    call: ClassVar[Callable[[torch.Tensor, int], torch.Tensor]]  # attached by @function (no type checker sees that)

    @staticmethod
    def forward(h_n: torch.Tensor, directions: int) -> torch.Tensor:
        return _last_states(h_n, directions)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.shape, ctx.directions = inputs[0].shape, inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        rows, n, hidden = ctx.shape
        last = grad_out.reshape(n, ctx.directions, hidden).transpose(0, 1)
        return torch.cat([last.new_zeros(rows - ctx.directions, n, hidden), last]), None

    @staticmethod
    def jvp(ctx: Any, h_n_dot: torch.Tensor, _directions: None) -> torch.Tensor:
        return _last_states(h_n_dot, ctx.directions)


class LastHidden(torch.nn.Module):
    """The last layer's final hidden state from a recurrent layer's ``(output, h_n)`` (LSTM: ``(output,
    (h_n, c_n))``): (N, hidden_size), or with two directions (N, 2·hidden_size), the forward direction's state
    after the last step followed by the reverse direction's after the first, as ``h_n[-2:]`` orders them.
    ``manual``: through ``LastStatesFunction`` (hand-written backward), else plain torch indexing."""

    def __init__(self, directions: int, manual: bool) -> None:
        super().__init__()
        self.directions = directions
        self.manual = manual

    def extra_repr(self) -> str:
        return f"directions={self.directions}, manual={self.manual}"

    def forward(self, result: tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        h_n = result[1][0] if isinstance(result[1], tuple) else result[1]
        if self.manual:
            return LastStatesFunction.call(h_n, self.directions)
        return _last_states(h_n, self.directions)


def recurrent(
    cell: Cell = "lstm",
    hidden_size: int = 128,
    num_layers: int = 1,
    bidirectional: bool = False,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    backend: Backend = "manual",
) -> torch.nn.Sequential:
    """An RNN (tanh), LSTM or GRU reading the image row by row, classifying from its last hidden state.

    The (C, H, W) image is a sequence of H steps of C·W features (MNIST: 28 steps of 28 pixels, digits: 8 of
    8). Layers: ``rows`` (``ImageRows``), ``<cell>`` (``RNN``/``LSTM``/``GRU``(C·W, hidden_size, num_layers,
    batch_first=True, bidirectional), named ``rnn``, ``lstm`` or ``gru``), ``last`` (``LastHidden``: the last
    layer's final state, both directions' concatenated when bidirectional), ``out`` (Linear to ``num_classes``).
    """
    nn = layers(backend)
    c, _, w = _check_in_shape(in_shape)
    if cell not in _CELLS:
        raise ValueError(f"recurrent: cell must be one of {sorted(_CELLS)}, got {cell!r}")
    check_int("recurrent", "hidden_size", hidden_size, 1)
    check_int("recurrent", "num_layers", num_layers, 1)
    directions = 2 if bidirectional else 1
    layer = getattr(nn, _CELLS[cell])(c * w, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("rows", ImageRows()),
                (cell, layer),
                ("last", LastHidden(directions, manual=nn is manualbp.nn)),
                ("out", nn.Linear(directions * hidden_size, num_classes)),
            ]
        )
    )


@dataclasses.dataclass
class ViTOptions:
    """The shape of ``--model.arch=vit`` (``vit``): ``patch_size`` (None: a quarter of the image's side, a 4 x 4
    grid), ``hidden_dim`` (the tokens' width), ``num_layers`` (encoder blocks), ``num_heads``, ``mlp_dim`` (the
    blocks' MLP width)."""

    patch_size: int | None = None
    hidden_dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 128


def vit(
    patch_size: int | None = None,
    hidden_dim: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    mlp_dim: int = 128,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    backend: Backend = "manual",
) -> torch.nn.Module:
    """A small vision transformer: torchvision's ``VisionTransformer`` (pre-norm encoder blocks, GELU MLPs, a class
    token and a learned position embedding) with its patch projection taking the image's C channels.

    The (C, H, W) image (H = W) is cut into (H / p)² patches of p x p pixels, each projected to ``hidden_dim``
    (``conv_proj``, a Conv2d with kernel and stride p); the class token goes in front and the position embedding is
    added; ``num_layers`` blocks of ``num_heads``-head self-attention and an MLP of width ``mlp_dim``; the class
    token's final state, layer-normed, is classified by ``heads.head``. ``patch_size`` None: H / 4, a 4 x 4 grid of
    patches (MNIST: 7 x 7 pixels, the digits: 2 x 2). The manual backend is the same network made manual by
    ``manualbp.convert`` (every layer, the class token and the position embedding included).
    """
    from torchvision.models.vision_transformer import VisionTransformer

    c, h, w = _check_in_shape(in_shape)
    patch = h // 4 if patch_size is None else patch_size
    if h != w or patch < 1 or h % patch:
        raise ValueError(
            f"vit: needs a square image cut into whole patches, got in_shape {tuple(in_shape)} and "
            f"patch_size {patch_size}"
        )
    for name, value in (
        ("hidden_dim", hidden_dim),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("mlp_dim", mlp_dim),
    ):
        check_int("vit", name, value, 1)
    if hidden_dim % num_heads:
        raise ValueError(f"vit: hidden_dim ({hidden_dim}) must be a multiple of num_heads ({num_heads})")
    layers(backend)  # validates the name
    net = VisionTransformer(h, patch, num_layers, num_heads, hidden_dim, mlp_dim, num_classes=num_classes)
    net.conv_proj = torch.nn.Conv2d(c, hidden_dim, kernel_size=patch, stride=patch)
    # torchvision's initialisation of the projection (VisionTransformer.__init__), for C channels
    torch.nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (c * patch * patch)))
    torch.nn.init.zeros_(net.conv_proj.bias)
    return manualbp.convert(net, strict=True) if backend == "manual" else net
