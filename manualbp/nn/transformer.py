"""manualbp.nn's transformer layers: torch.nn.TransformerEncoderLayer, TransformerDecoderLayer,
TransformerEncoder and TransformerDecoder, every layer inside them manual, torch's fast paths never taken."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from manualbp import functional as MF
from manualbp.nn._composite import ManualComposite
from manualbp.nn.attention import float_mask

#: The activations torch's transformer layers take as a function (``activation="relu"`` stores ``F.relu``), and
#: their manual counterparts; an activation given as a module (``torch.nn.GELU()``) is a child layer, made manual.
_ACTIVATIONS: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {F.relu: MF.relu, F.gelu: MF.gelu}


class _ManualFeedForward(ManualComposite):
    """The feed-forward block with the activation manual: linear2(dropout(activation(linear1(x))))."""

    activation: Callable[..., torch.Tensor]

    def check_supported(self) -> None:
        super().check_supported()
        activation = self.activation
        if not isinstance(activation, torch.nn.Module) and activation not in _ACTIVATIONS:
            name = getattr(activation, "__name__", repr(activation))
            raise NotImplementedError(
                f"activation {name} has no manualbp twin: give 'relu', 'gelu' or a torch.nn module with a twin"
            )

    def _manual_activation(self, x: torch.Tensor) -> torch.Tensor:
        activation = self.activation
        if isinstance(activation, torch.nn.Module):
            return activation(x)
        return _ACTIVATIONS[activation](x)


class TransformerEncoderLayer(_ManualFeedForward, torch.nn.TransformerEncoderLayer):
    """``torch.nn.TransformerEncoderLayer`` (same arguments, parameters and init; ``norm_first`` both ways;
    ``activation`` "relu", "gelu", ``F.relu``, ``F.gelu`` or a module with a manual twin), every layer in it
    manual: ``self_attn`` a ``manualbp.nn.MultiheadAttention``, ``linear1``/``linear2`` Linear, the norms
    LayerNorm, the dropouts Dropout.

        norm_first:  x = x + SA(norm1(x));  x = x + FF(norm2(x))
        otherwise:   x = norm1(x + SA(x));  x = norm2(x + FF(x))
        SA(x) = dropout1(self_attn(x, x, x))      FF(x) = dropout2(linear2(dropout(activation(linear1(x)))))

    torch's fast path for inference (``torch._transformer_encoder_layer_fwd``, which reads the weights itself)
    is never taken: this forward is torch's other path, the one it documents the layer by.
    """

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        src_key_padding_mask = float_mask(src_key_padding_mask, "src_key_padding_mask", src.dtype, src_mask, "src_mask")
        src_mask = float_mask(src_mask, "src_mask", src.dtype)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self._manual_activation(self.linear1(x)))))


class TransformerDecoderLayer(_ManualFeedForward, torch.nn.TransformerDecoderLayer):
    """``torch.nn.TransformerDecoderLayer`` (same arguments, parameters and init; ``norm_first`` both ways;
    ``activation`` as for ``TransformerEncoderLayer``), every layer in it manual: ``self_attn`` and
    ``multihead_attn`` (the cross-attention on the memory) ``manualbp.nn.MultiheadAttention``, the rest as in
    the encoder layer. torch's forward, with the feed-forward block's activation manual:

        norm_first:  x = x + SA(norm1(x));  x = x + MHA(norm2(x), memory);  x = x + FF(norm3(x))
        otherwise:   x = norm1(x + SA(x));  x = norm2(x + MHA(x, memory));  x = norm3(x + FF(x))

    A copy keeps an activation given as a module (torch's own ``copy.deepcopy`` of the layer, and so each layer of
    a ``TransformerDecoder`` built from it, silently computes ReLU instead, torch 2.14).
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's __setstate__ (run by copy.deepcopy, and so by TransformerDecoder's clones) sets activation = F.relu
        # when the state has none of its own, shadowing an activation module (torch.nn.GELU()) kept in _modules:
        # torch's copies then compute ReLU. Here the module stays the activation.
        if "activation" not in state and "activation" in state.get("_modules", {}):
            torch.nn.Module.__setstate__(self, state)
        else:
            super().__setstate__(state)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.linear2(self.dropout(self._manual_activation(self.linear1(x)))))


class TransformerEncoder(ManualComposite, torch.nn.TransformerEncoder):
    """``torch.nn.TransformerEncoder``: its layers (``manualbp.nn.TransformerEncoderLayer``) in turn, then
    ``norm``. torch's nested-tensor path for padded batches in inference is never taken, so padded positions
    of the output hold the layers' values (torch's nested path writes zeros there)."""

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        src_key_padding_mask = float_mask(src_key_padding_mask, "src_key_padding_mask", src.dtype, mask, "mask")
        mask = float_mask(mask, "mask", src.dtype)
        batch_first = self.layers[0].self_attn.batch_first
        causal = torch.nn.modules.transformer._detect_is_causal_mask(
            mask, is_causal, torch.nn.modules.transformer._get_seq_len(src, batch_first)
        )
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, is_causal=causal, src_key_padding_mask=src_key_padding_mask)
        return output if self.norm is None else self.norm(output)


class TransformerDecoder(ManualComposite, torch.nn.TransformerDecoder):
    """``torch.nn.TransformerDecoder``: its layers (``manualbp.nn.TransformerDecoderLayer``) in turn, then
    ``norm``, as torch's forward."""
