"""Manual twins of torchvision's ``VisionTransformer`` and its ``Encoder``: the two modules of a ViT that own
parameters used outside a layer (the class token, the position embedding), so that ``manualbp.convert`` turns
a torchvision ViT (``vit_b_16(image_size=32)`` and the rest) fully manual."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.models import vision_transformer as tv

from manualbp import functional as MF
from manualbp.nn._composite import ManualComposite


class Encoder(ManualComposite, tv.Encoder):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ViT encoder: the position embedding P (1, T, D) added to every sample
    (``manualbp.functional.add_parameter``: dL/dP = Σ_n dL/dy_n, each sample's term its own per-sample
    gradient), dropout, the encoder blocks (each layer in them manual), the final LayerNorm.

    input: (N, T, D) -> (N, T, D)
    """

    pos_embedding: torch.nn.Parameter
    dropout: torch.nn.Module
    layers: torch.nn.Module
    ln: torch.nn.Module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        return self.ln(self.layers(self.dropout(MF.add_parameter(input, self.pos_embedding))))


class VisionTransformer(ManualComposite, tv.VisionTransformer):  # type: ignore[misc]  # as Encoder
    """torchvision's ``VisionTransformer`` (same arguments, parameters and init), every layer manual: the patch
    projection (a Conv2d, or the conv stem), the class token c put in front of each sample's patches
    (``manualbp.functional.cat_token``: dL/dc = Σ_n dL/dy_n[0]), the ``Encoder``, the heads.

    x: (N, C, image_size, image_size) -> (N, num_classes)
    """

    _process_input: Callable[[torch.Tensor], torch.Tensor]
    class_token: torch.nn.Parameter
    encoder: torch.nn.Module
    heads: torch.nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = MF.cat_token(self._process_input(x), self.class_token)
        return self.heads(self.encoder(x)[:, 0])
