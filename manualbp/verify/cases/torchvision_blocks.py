"""Registry cases: torchvision blocks that own a parameter (ConvNeXt's layer scale, Swin's and MaxViT's relative position bias)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.verify.case import InputMaker, OpCase
from manualbp.verify.case_makers import args, randn, torchvision_op


def convnext_block(case_id: str, *ctor_args: Any, inputs: InputMaker, train: bool = True) -> OpCase:
    """A case comparing ``manualbp.nn.CNBlock`` with torchvision's ``CNBlock`` (torchvision loaded on first build)."""

    def build(manual: bool) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            from torchvision.models import convnext

            from manualbp.nn import convnext as manual_convnext

            return (manual_convnext if manual else convnext).CNBlock(*ctor_args)

        return make

    return OpCase(case_id, build(True), build(False), inputs, train)


CASES: list[OpCase] = [
    # the layout moves inside ConvNeXt's block: (N, C, H, W) -> (N, H, W, C) and back
    torchvision_op("permute-channels_last", "Permute", [0, 2, 3, 1], inputs=args(randn(2, 3, 4, 5))),
    torchvision_op("permute-channels_first", "Permute", [0, 3, 1, 2], inputs=args(randn(2, 4, 5, 3))),
    # ConvNeXt's block: dim 4, layer scale 0.5; no stochastic depth in training, and p = 0.5 in eval mode (identity)
    convnext_block("cn_block-dim4", 4, 0.5, 0.0, inputs=args(randn(2, 4, 5, 5))),
    convnext_block("cn_block-dim4-stochastic_depth-eval", 4, 0.5, 0.5, inputs=args(randn(2, 4, 5, 5)), train=False),
    # stochastic depth in training: the fixed seed gives both sides one mask (not a per-sample case: random)
    convnext_block("stochastic_depth-cn_block-dim4-train", 4, 0.5, 0.5, inputs=args(randn(4, 4, 3, 3))),
]


def window_attention(
    case_id: str,
    layer: str,
    *ctor_args: Any,
    inputs: InputMaker,
    logit_scale: float | None = None,
    unsupported: tuple[tuple[str, str], ...] = (),
) -> OpCase:
    """A case comparing ``manualbp.nn.<layer>`` with torchvision's Swin or MaxViT attention class of that name
    (torchvision loaded on first build). ``logit_scale``: Swin V2's τ set to it in every head (the reference
    loads the manual layer's state); ``unsupported``: as ``OpCase``'s."""

    def build(manual: bool) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            from torchvision.models import maxvit, swin_transformer

            source = swin_transformer if hasattr(swin_transformer, layer) else maxvit
            module = getattr(mnn if manual else source, layer)(*ctor_args)
            if logit_scale is not None:
                with torch.no_grad():
                    module.logit_scale.fill_(logit_scale)
            return module

        return make

    return OpCase(case_id, build(True), build(False), inputs, unsupported=unsupported)


class Normalize(torch.nn.Module):
    """``function(x, dim=dim)``: manualbp's or torch's ``normalize`` as a module (Swin V2's cosine attention)."""

    def __init__(self, function: Callable[..., torch.Tensor], dim: int) -> None:
        super().__init__()
        self.function, self.dim = function, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, dim=self.dim)


def normalize(case_id: str, dim: int, *, inputs: InputMaker) -> OpCase:
    """A case comparing ``manualbp.functional.normalize`` with torch's along ``dim`` (numbers only)."""
    return OpCase(
        case_id,
        lambda: Normalize(MF.normalize, dim),
        lambda: Normalize(torch.nn.functional.normalize, dim),
        inputs,
        is_twin=False,
    )


#: Why the memory-format check cannot apply to a padded Swin window attention.
_PAD_LAYOUT = (
    "the input's gradient is a slice of the padded map's (a view: the padding is a concatenation, whose backward "
    "slices), where torch's pad copies it out contiguous; the values are equal"
)
_SWIN, _SWIN_V2, _MAXVIT = "ShiftedWindowAttention", "ShiftedWindowAttentionV2", "RelativePositionalMultiHeadAttention"

CASES += [
    # Swin's window attention on a (2, 4, 4, C) map: 2x2 windows, unshifted and shifted by 1 (the -100 region mask)
    window_attention(
        "shifted_window_attention-dim8-heads2", _SWIN, 8, [2, 2], [0, 0], 2, inputs=args(randn(2, 4, 4, 8))
    ),
    window_attention(
        "shifted_window_attention-dim8-heads2-shift1", _SWIN, 8, [2, 2], [1, 1], 2, inputs=args(randn(2, 4, 4, 8))
    ),
    # a 3x3 window over a 5x4 map: padded to 6x6, one head
    window_attention(
        "shifted_window_attention-dim4-window3-shift1-pad",
        _SWIN,
        4,
        [3, 3],
        [1, 1],
        1,
        inputs=args(randn(2, 5, 4, 4)),
        unsupported=(("memory_format", _PAD_LAYOUT),),
    ),
    # V2: cosine attention, the table from cpb_mlp, no bias on the keys; τ = 0.7 (s = 2): torchvision's initial
    # s = 10 with a bias up to 16 leaves float32 and bfloat16 gradients of torch and manualbp alike ~1e-5 from
    # float64 (the agreement checks compare the two); the float64 checks and tests/nn/test_window_attention.py
    # run it at s = 10. The shifted case takes τ = 0.3 (s = 1.35): manualbp applies the sigmoid to the T table
    # entries before the lookup, torch to the L·S looked-up ones, so in bfloat16 they round at different places;
    # at τ = 0.7 the two bfloat16 gradients of cpb_mlp differed by 0.064 where the tolerance allows 0.058, each
    # off from float64 by ~0.05 (of a largest entry 3.5)
    window_attention(
        "shifted_window_attention_v2-dim8-heads2",
        _SWIN_V2,
        8,
        [2, 2],
        [0, 0],
        2,
        inputs=args(randn(2, 4, 4, 8)),
        logit_scale=0.7,
    ),
    window_attention(
        "shifted_window_attention_v2-dim6-shift1",
        _SWIN_V2,
        6,
        [2, 2],
        [1, 1],
        2,
        inputs=args(randn(2, 4, 4, 6)),
        logit_scale=0.3,
    ),
    # MaxViT: (N, G, P, D) = 3 windows of P = 4 tokens, heads of 4 features
    window_attention("maxvit_attention-dim8-heads2", _MAXVIT, 8, 4, 4, inputs=args(randn(2, 3, 4, 8))),
    # the normalisation of Swin V2's queries and keys
    normalize("normalize-dim-1", -1, inputs=args(randn(2, 3, 4))),
    normalize("normalize-dim1", 1, inputs=args(randn(3, 5))),
]
