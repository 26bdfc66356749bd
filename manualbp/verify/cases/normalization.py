"""Registry cases: Group, instance and channels-first layer norms, BatchNorm3d."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

import manualbp.nn as mnn
from manualbp.verify.case import InputMaker, OpCase
from manualbp.verify.case_makers import args, randn, twin, unbatched


def _drawn(make: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    """``make`` whose layer has every floating parameter and buffer drawn from U(0.5, 1.5) by a fixed generator."""

    def build() -> torch.nn.Module:
        layer = make()
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for t in (*layer.parameters(), *layer.buffers()):
                if t.is_floating_point():
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
        return layer

    return build


def drawn_state(case: OpCase) -> OpCase:
    """``case`` with its affine parameters and running statistics drawn, one value per channel (the same on both
    sides), rather than torch's initial ones (γ = 1, β = 0, μ_r = 0, v_r = 1), which a mix-up of channels would not
    change."""
    return dataclasses.replace(case, manual=_drawn(case.manual), reference=_drawn(case.reference))


def convnext_layer(case_id: str, layer: str, *ctor_args: Any, inputs: InputMaker, **ctor_kwargs: Any) -> OpCase:
    """A case comparing ``manualbp.nn.<layer>`` with ``torchvision.models.convnext.<layer>`` (torchvision loaded on
    first build)."""

    def build(manual: bool) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            from torchvision.models import convnext

            return getattr(mnn if manual else convnext, layer)(*ctor_args, **ctor_kwargs)

        return make

    return OpCase(case_id, build(True), build(False), inputs)


def layout_kept(case: OpCase, why: str) -> OpCase:
    """``case`` whose torch reference changes the input's layout where manualbp keeps it, by design (``why``): the
    memory-format check, which compares layouts, cannot apply (its row is "unsupported")."""
    reason = f"manualbp keeps the input's layout (a channels_last input gives a channels_last output); {why}"
    return dataclasses.replace(case, unsupported=(("memory_format", reason),))


#: Why the layouts differ from the reference's.
PERMUTED = (
    "torchvision's LayerNorm2d permutes to (N, H, W, C) and back, so a contiguous input gives a channels_last output"
)
COPIED = "torch's instance_norm normalises a contiguous copy of the input, so it returns a contiguous output"


_GROUP_NORM = [
    # GroupNorm: one group (a layer norm over C and the spatial dims), several, one per channel (instance norm)
    drawn_state(twin("group_norm-groups1", "GroupNorm", 1, 4, inputs=args(randn(2, 4, 3, 3, scale=2.0, offset=1.0)))),
    drawn_state(twin("group_norm-groups2", "GroupNorm", 2, 4, inputs=args(randn(2, 4, 3, 3, scale=2.0, offset=1.0)))),
    drawn_state(twin("group_norm-groups_per_channel", "GroupNorm", 4, 4, inputs=args(randn(2, 4, 3, 3)))),
    twin("group_norm-groups2-initial_affine", "GroupNorm", 2, 4, inputs=args(randn(2, 4, 3, 3))),
    drawn_state(twin("group_norm-groups3-eps0.1", "GroupNorm", 3, 6, eps=0.1, inputs=args(randn(2, 6, 2, 2)))),
    twin("group_norm-groups2-no_affine", "GroupNorm", 2, 4, affine=False, inputs=args(randn(2, 4, 3, 3))),
    drawn_state(twin("group_norm-groups2-no_bias", "GroupNorm", 2, 4, bias=False, inputs=args(randn(2, 4, 3, 3)))),
    # (N, C) and (N, C, L) inputs, and a 5-d one
    drawn_state(twin("group_norm-groups2-2d", "GroupNorm", 2, 6, inputs=args(randn(3, 6)))),
    drawn_state(twin("group_norm-groups3-3d", "GroupNorm", 3, 6, inputs=args(randn(3, 6, 5)))),
    drawn_state(twin("group_norm-groups2-5d", "GroupNorm", 2, 4, inputs=args(randn(2, 4, 2, 3, 2)))),
]

_INSTANCE_NORM = [
    # InstanceNorm: statistics of the input (track_running_stats False, or training), running statistics in eval
    drawn_state(twin("instance_norm1d-affine", "InstanceNorm1d", 3, affine=True, inputs=args(randn(2, 3, 5)))),
    twin("instance_norm1d-no_affine", "InstanceNorm1d", 3, inputs=args(randn(2, 3, 5, scale=2.0, offset=1.0))),
    drawn_state(
        twin(
            "instance_norm1d-affine-track_running_stats",
            "InstanceNorm1d",
            3,
            affine=True,
            track_running_stats=True,
            inputs=args(randn(2, 3, 5, scale=2.0, offset=1.0)),
        )
    ),
    drawn_state(
        twin(
            "instance_norm1d-affine-track_running_stats-eval",
            "InstanceNorm1d",
            3,
            affine=True,
            track_running_stats=True,
            train=False,
            inputs=args(randn(2, 3, 5)),
        )
    ),
    unbatched(
        drawn_state(
            twin("instance_norm1d-affine-unbatched", "InstanceNorm1d", 3, affine=True, inputs=args(randn(3, 5)))
        )
    ),
    drawn_state(twin("instance_norm2d-affine", "InstanceNorm2d", 3, affine=True, inputs=args(randn(2, 3, 3, 4)))),
    twin("instance_norm2d-affine-initial", "InstanceNorm2d", 3, affine=True, inputs=args(randn(2, 3, 3, 3))),
    twin("instance_norm2d-no_affine", "InstanceNorm2d", 3, inputs=args(randn(2, 3, 3, 3))),
    drawn_state(
        twin(
            "instance_norm2d-affine-no_bias-eps0.1",
            "InstanceNorm2d",
            3,
            affine=True,
            bias=False,
            eps=0.1,
            inputs=args(randn(2, 3, 2, 3)),
        )
    ),
    drawn_state(
        twin(
            "instance_norm2d-affine-track_running_stats-momentum_none",
            "InstanceNorm2d",
            3,
            affine=True,
            track_running_stats=True,
            momentum=None,
            inputs=args(randn(2, 3, 3, 3)),
        )
    ),
    drawn_state(
        twin(
            "instance_norm2d-affine-track_running_stats-eval",
            "InstanceNorm2d",
            3,
            affine=True,
            track_running_stats=True,
            train=False,
            inputs=args(randn(2, 3, 3, 3)),
        )
    ),
    drawn_state(
        twin(
            "instance_norm2d-no_affine-track_running_stats-eval",
            "InstanceNorm2d",
            3,
            track_running_stats=True,
            train=False,
            inputs=args(randn(2, 3, 2, 2)),
        )
    ),
    twin("instance_norm2d-no_affine-eval", "InstanceNorm2d", 3, train=False, inputs=args(randn(2, 3, 2, 3))),
    unbatched(
        drawn_state(
            twin("instance_norm2d-affine-unbatched", "InstanceNorm2d", 3, affine=True, inputs=args(randn(3, 2, 3)))
        )
    ),
    drawn_state(twin("instance_norm3d-affine", "InstanceNorm3d", 3, affine=True, inputs=args(randn(2, 3, 2, 3, 2)))),
    twin("instance_norm3d-no_affine", "InstanceNorm3d", 3, inputs=args(randn(2, 3, 2, 2, 2))),
    drawn_state(
        twin(
            "instance_norm3d-affine-track_running_stats",
            "InstanceNorm3d",
            3,
            affine=True,
            track_running_stats=True,
            inputs=args(randn(2, 3, 2, 2, 2, scale=2.0, offset=1.0)),
        )
    ),
    drawn_state(
        twin(
            "instance_norm3d-affine-track_running_stats-eval",
            "InstanceNorm3d",
            3,
            affine=True,
            track_running_stats=True,
            train=False,
            inputs=args(randn(2, 3, 2, 2, 2)),
        )
    ),
    unbatched(twin("instance_norm3d-no_affine-unbatched", "InstanceNorm3d", 3, inputs=args(randn(3, 2, 2, 2)))),
]

_BATCH_NORM3D = [
    # BatchNorm3d: batch statistics in training (they mix the samples), running statistics in eval
    twin("batch_norm3d-train", "BatchNorm3d", 3, inputs=args(randn(2, 3, 2, 3, 2, scale=2.0, offset=1.0))),
    twin("batch_norm3d-train-momentum_none", "BatchNorm3d", 3, momentum=None, inputs=args(randn(2, 3, 2, 2, 2))),
    twin("batch_norm3d-train-no_affine", "BatchNorm3d", 3, affine=False, inputs=args(randn(2, 3, 2, 2, 2))),
    drawn_state(twin("batch_norm3d-eval", "BatchNorm3d", 3, train=False, inputs=args(randn(2, 3, 2, 2, 2)))),
    drawn_state(
        twin(
            "batch_norm3d-eval-no_affine",
            "BatchNorm3d",
            3,
            affine=False,
            train=False,
            inputs=args(randn(2, 3, 2, 2, 2)),
        )
    ),
]

_LAYER_NORM2D = [
    # torchvision's LayerNorm2d (ConvNeXt): a layer norm over the channels at each position
    drawn_state(convnext_layer("layer_norm2d-c4", "LayerNorm2d", 4, inputs=args(randn(2, 4, 3, 3)))),
    convnext_layer("layer_norm2d-c3-initial_affine", "LayerNorm2d", 3, inputs=args(randn(2, 3, 2, 3))),
    drawn_state(
        convnext_layer(
            "layer_norm2d-c3-eps1e-6",
            "LayerNorm2d",
            3,
            eps=1e-6,
            inputs=args(randn(2, 3, 2, 2, scale=2.0, offset=1.0)),
        )
    ),
    convnext_layer(
        "layer_norm2d-no_affine", "LayerNorm2d", 4, elementwise_affine=False, inputs=args(randn(2, 4, 2, 2))
    ),
    drawn_state(
        convnext_layer("layer_norm2d-c4-no_bias", "LayerNorm2d", 4, bias=False, inputs=args(randn(2, 4, 2, 3)))
    ),
]

CASES: list[OpCase] = [
    *_GROUP_NORM,
    # the memory-format check lays 4-d and 5-d inputs out channels-last (``relayout``), others stay as they are
    *[layout_kept(c, COPIED) if c.sample()[0].dim() in (4, 5) else c for c in _INSTANCE_NORM],
    *_BATCH_NORM3D,
    *[layout_kept(c, PERMUTED) for c in _LAYER_NORM2D],
]
