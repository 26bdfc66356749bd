"""Every 2-D op returns the memory format its torch twin returns, and its input gradient the layout torch's
has: a channels_last model stays channels_last through our layers."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp.functional as MF

Op = Callable[[torch.Tensor], torch.Tensor]

_WEIGHT = torch.randn(5, 6, 3, 3, dtype=torch.float64)
_BIAS = torch.randn(5, dtype=torch.float64)
_MEAN, _VAR = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)

#: (ours, torch's) for each op taking an (N, 6, H, W) input
OPS: dict[str, tuple[Op, Op]] = {
    "max_pool2d": (lambda x: MF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
    "max_pool2d-padded-strided": (lambda x: MF.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    "max_pool2d-dilated": (lambda x: MF.max_pool2d(x, 2, dilation=2), lambda x: F.max_pool2d(x, 2, dilation=2)),
    "relu_max_pool2d": (lambda x: MF.relu_max_pool2d(x, 2), lambda x: F.max_pool2d(F.relu(x), 2)),
    "relu_max_pool2d-padded": (lambda x: MF.relu_max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(F.relu(x), 3, 2, 1)),
    "avg_pool2d": (lambda x: MF.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2)),
    "adaptive_avg_pool2d": (lambda x: MF.adaptive_avg_pool2d(x, 3), lambda x: F.adaptive_avg_pool2d(x, 3)),
    "conv2d": (lambda x: MF.conv2d(x, _WEIGHT, _BIAS, padding=1), lambda x: F.conv2d(x, _WEIGHT, _BIAS, padding=1)),
    "batch_norm-train": (
        lambda x: MF.batch_norm(x, None, None, training=True),
        lambda x: F.batch_norm(x, None, None, training=True),
    ),
    "batch_norm-eval": (
        lambda x: MF.batch_norm(x, _MEAN, _VAR, training=False),
        lambda x: F.batch_norm(x, _MEAN, _VAR, training=False),
    ),
    "relu": (MF.relu, F.relu),
}

#: small inputs stay in their layout in the pools; the large one crosses ``CHANNELS_LAST_MIN_ELEMENTS``
SHAPES = [(2, 6, 8, 8), (8, 6, 28, 28)]


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("name", list(OPS))
def test_output_and_gradient_keep_torchs_memory_format(name: str, layout: torch.memory_format, shape) -> None:
    ours, theirs = OPS[name]
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    y, y_ref = ours(x), theirs(x)
    assert_close(y, y_ref)
    assert _channels_last(y) == _channels_last(y_ref)
    assert y.is_contiguous() == y_ref.is_contiguous()
    grad_out = torch.randn_like(y_ref)
    (grad,), (grad_ref,) = torch.autograd.grad(y, x, grad_out), torch.autograd.grad(y_ref, x, grad_out)
    assert_close(grad, grad_ref)
    assert _channels_last(grad) == _channels_last(grad_ref)
    assert grad.is_contiguous() == grad_ref.is_contiguous()


@pytest.mark.parametrize("name", ["max_pool2d", "relu_max_pool2d"])
def test_max_pools_keep_a_channels_last_slice_channels_last(name: str) -> None:
    """An input whose strides are ordered as channels_last but not dense (a crop) pools to channels_last, as torch's."""
    ours, theirs = OPS[name]
    x = torch.randn(2, 6, 12, 12).contiguous(memory_format=torch.channels_last)[:, :, 2:10, 2:10]
    assert _channels_last(ours(x)) == _channels_last(theirs(x)) == True  # noqa: E712


def test_max_pool2d_indices_keep_torchs_memory_format() -> None:
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    _, indices = MF.max_pool2d(x, 2, return_indices=True)
    _, indices_ref = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(indices, indices_ref) and _channels_last(indices) and _channels_last(indices_ref)


def _layouts(sizes: tuple[int, int, int, int]) -> list[torch.Tensor]:
    """Tensors of ``sizes`` laid out every way a model meets: contiguous, channels_last, transposed, permuted,
    sliced, expanded (the ambiguous ones among them: one channel, size-1 dims, zero strides)."""
    base = torch.empty(sizes)
    layouts = [
        base,
        base.contiguous(memory_format=torch.channels_last),
        base.transpose(2, 3),
        base.permute(0, 3, 1, 2),
        base.permute(3, 2, 1, 0),
        base.transpose(0, 1),
        torch.empty(1, 1, 1, 1).expand(sizes),
    ]
    if sizes[1] > 1:
        layouts.append(base[:, ::2])
    if sizes[3] > 1:
        layouts.append(base[..., ::2])
    return layouts


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_memory_format_of_decides_as_torchs_suggest_memory_format(channels: int) -> None:
    from torch._prims_common import suggest_memory_format

    from manualbp.functional._layout import memory_format_of

    checked = 0
    for n, h, w in itertools.product([0, 1, 2, 3], [1, 2, 4], [1, 2, 3]):
        for t in _layouts((n, channels, h, w)):
            assert memory_format_of(t) == suggest_memory_format(t), (t.shape, t.stride())
            checked += 1
    assert checked > 200
