"""Manual twins of torchvision's windowed attention blocks: Swin's ``ShiftedWindowAttention`` (V1) and
``ShiftedWindowAttentionV2``, MaxViT's ``RelativePositionalMultiHeadAttention``. Loaded on first need (they import
torchvision); with them ``manualbp.convert`` leaves nothing of torch's that computes in swin_t/s/b,
swin_v2_t/s/b and maxvit_t.

Each twin has its torchvision class's constructor, parameters and buffers; its projections (and Swin V2's
``cpb_mlp``) become manual layers, and its forward computes with ``manualbp.functional`` alone:

    windows x_w (N, W, L, C) -> q, k, v = split(Linear_qkv(x_w))           (N, W, H, L, E), E = C / H
    attention = softmax(s · q kᵀ + bias) v        (``scaled_dot_product_attention``, the bias as its float mask)
    y = Linear_proj(attention)                    heads merged back to (N, W, L, C)

bias = ``relative_position_bias``: the table's entries at the relative position index (plus, for Swin's shifted
windows, -100 between tokens of different regions), expanded over the batch so that each sample's gradient of
the table is its own (``manualbp.per_sample``). Swin V2 normalises q and k (``normalize``), scales q by
exp(min(τ, log 100)) per head (``exp_scale``; s = 1) and reads the table from ``cpb_mlp``, as 16·sigmoid.
The window partition, the cyclic shift, the padding and the head split stay torch's (they only move data).
"""

from __future__ import annotations

import math

import torch
from torchvision.models import maxvit, swin_transformer

from manualbp import functional as MF
from manualbp.functional._reduction import REDUCTION
from manualbp.functional.window_attention import add_query_value_bias, exp_scale, relative_position_bias
from manualbp.nn._composite import ManualComposite

#: Swin V2's bound on its logit scale: s = exp(min(τ, log 100)), at most 100.
MAX_LOG_SCALE = math.log(100.0)


def _shift_mask(like: torch.Tensor, size: tuple[int, int], window: list[int], shift: list[int]) -> torch.Tensor:
    """Swin's mask of a shifted window partition, (W, L, L): -100 between two tokens of a window that come from
    different regions of the rolled map, 0 within one (torchvision's construction)."""
    height, width = size
    regions = like.new_zeros((height, width))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(height // window[0], window[0], width // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differ = regions.unsqueeze(1) != regions.unsqueeze(2)
    return torch.zeros_like(differ, dtype=like.dtype).masked_fill(differ, -100.0)


def _samples(batch: int) -> int:
    """How many samples the bias is given: the batch's N inside a per-sample context (``manualbp.per_sample``), so
    that each sample's gradient of the bias table is its own; else 1 (broadcast). A forward run outside the context
    and a backward inside it raise the context's ``PerSampleError`` (the layers disagree on the batch)."""
    return batch if REDUCTION.mode is not None else 1


def _pad_to_windows(x: torch.Tensor, window: list[int]) -> torch.Tensor:
    """x (N, H, W, C) with zero rows and columns appended at the bottom and right up to multiples of the window
    (``F.pad``'s, as a concatenation: its backward is a slice)."""
    for dim, size in ((1, window[0]), (2, window[1])):
        missing = (size - x.shape[dim] % size) % size
        if missing:
            zeros = x.new_zeros(*x.shape[:dim], missing, *x.shape[dim + 1 :])
            x = torch.cat((x, zeros), dim)
    return x


def _roll(x: torch.Tensor, shifts: tuple[int, int]) -> torch.Tensor:
    """``torch.roll(x, shifts, dims=(1, 2))`` as concatenations of slices (their backward: slices and a
    concatenation, the same move reversed)."""
    for dim, shift in zip((1, 2), shifts):
        cut = -shift % x.shape[dim]
        if cut:
            x = torch.cat((x.narrow(dim, cut, x.shape[dim] - cut), x.narrow(dim, 0, cut)), dim)
    return x


class _ShiftedWindows(ManualComposite):
    """The forward both Swin twins share (torchvision's ``shifted_window_attention``); each says how it makes the
    queries and keys (``_queries_keys``), its qkv projection (``_qkv``) and its bias table (``_table``)."""

    window_size: list[int]
    shift_size: list[int]
    num_heads: int
    attention_dropout: float
    dropout: float
    qkv: torch.nn.Linear
    proj: torch.nn.Linear
    relative_position_index: torch.Tensor

    #: The factor c of the table's entries (Swin V2's 16·sigmoid: 16).
    table_scale = 1.0

    def _logit_scale(self) -> float:
        """The scale s of the logits s · q kᵀ."""
        return 1.0

    def _qkv(self, windows: torch.Tensor) -> torch.Tensor:
        return self.qkv(windows)

    def _queries_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def _table(self, samples: int) -> torch.Tensor:
        """The bias table (T, H), or (N, T, H) one per sample (``samples`` = N > 1)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        window = self.window_size
        batch, height, width, channels = x.shape
        padded = _pad_to_windows(x, window)
        _, pad_h, pad_w, _ = padded.shape
        # no shift along a dim the window covers whole
        shift = [0 if window[d] >= size else self.shift_size[d] for d, size in enumerate((pad_h, pad_w))]
        if sum(shift) > 0:
            padded = _roll(padded, (-shift[0], -shift[1]))
        grid = (pad_h // window[0], pad_w // window[1])
        tokens = window[0] * window[1]
        windows = padded.view(batch, grid[0], window[0], grid[1], window[1], channels)
        windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(batch, grid[0] * grid[1], tokens, channels)

        heads = self.num_heads
        qkv = self._qkv(windows).reshape(batch, grid[0] * grid[1], tokens, 3, heads, channels // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (N, W, H, L, E)
        q, k = self._queries_keys(q, k)
        mask = _shift_mask(x, (pad_h, pad_w), window, shift) if sum(shift) > 0 else None
        index = self.relative_position_index.view(tokens, tokens)
        samples = _samples(batch)
        bias = relative_position_bias(self._table(samples), index, samples, mask, self.table_scale)
        dropout = self.attention_dropout if self.training else 0.0
        out = MF.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self._logit_scale())
        out = self.proj(out.transpose(2, 3).reshape(batch, grid[0] * grid[1], tokens, channels))
        out = MF.dropout(out, p=self.dropout, training=self.training)

        out = out.view(batch, grid[0], grid[1], window[0], window[1], channels)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
        if sum(shift) > 0:
            out = _roll(out, (shift[0], shift[1]))
        if (pad_h, pad_w) != (height, width):
            out = out[:, :height, :width, :]
        return out.contiguous()


class ShiftedWindowAttention(_ShiftedWindows, swin_transformer.ShiftedWindowAttention):  # type: ignore[misc]
    """torchvision's Swin (V1) window attention, every computation manual: s = E^-1/2, bias = the learned table
    ``relative_position_bias_table`` (T, H) at ``relative_position_index``."""

    relative_position_bias_table: torch.nn.Parameter

    def _logit_scale(self) -> float:
        return (self.qkv.in_features // self.num_heads) ** -0.5

    def _table(self, samples: int) -> torch.Tensor:
        return self.relative_position_bias_table


class ShiftedWindowAttentionV2(_ShiftedWindows, swin_transformer.ShiftedWindowAttentionV2):  # type: ignore[misc]
    """torchvision's Swin V2 window attention, every computation manual: cosine attention
    (q̂ = q/‖q‖, k̂ = k/‖k‖, logits exp(min(τ, log 100)) q̂ k̂ᵀ with τ = ``logit_scale`` per head), the bias table
    16·sigmoid(``cpb_mlp``(``relative_coords_table``)), and no bias on the keys (the middle third of ``qkv.bias``
    is not used, so its gradient is zero, as torchvision's)."""

    logit_scale: torch.nn.Parameter
    cpb_mlp: torch.nn.Sequential
    relative_coords_table: torch.Tensor
    table_scale = 16.0

    def _qkv(self, windows: torch.Tensor) -> torch.Tensor:
        if getattr(self.qkv, "rule", None) is not None:
            raise NotImplementedError(
                f"{type(self).__name__}: a learning rule on qkv is not supported (its keys' bias is left out, so the "
                "projection is not the Linear layer's own forward); use rule='backprop'"
            )
        qkv = MF.linear(windows, self.qkv.weight)
        return qkv if self.qkv.bias is None else add_query_value_bias(qkv, self.qkv.bias)

    def _queries_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return exp_scale(MF.normalize(q, dim=-1), self.logit_scale, MAX_LOG_SCALE), MF.normalize(k, dim=-1)

    def _table(self, samples: int) -> torch.Tensor:
        """16·sigmoid is applied by the bias (16 as its scale) to sigmoid(cpb_mlp(coordinates)) (T, H): the
        entries, sigmoid'ed before the lookup instead of after, are the same. For per-sample gradients the
        coordinates are given every sample, (N, T, H), so that cpb_mlp's layers see the batch."""
        coords = self.relative_coords_table
        if samples == 1:
            return MF.sigmoid(self.cpb_mlp(coords).view(-1, self.num_heads))
        coords = coords.expand(samples, *coords.shape[1:])
        return MF.sigmoid(self.cpb_mlp(coords).view(samples, -1, self.num_heads))


class RelativePositionalMultiHeadAttention(ManualComposite, maxvit.RelativePositionalMultiHeadAttention):  # type: ignore[misc]
    """torchvision's MaxViT attention over the P = ``max_seq_len`` tokens of each of G windows (or grid cells),
    every computation manual: x (N, G, P, D) -> (N, G, P, D), s = D^-1/2 (torchvision scales by the feature size,
    not the head size), bias = ``relative_position_bias_table`` at ``relative_position_index``."""

    n_heads: int
    head_dim: int
    max_seq_len: int
    scale_factor: float
    to_qkv: torch.nn.Linear
    merge: torch.nn.Linear
    relative_position_bias_table: torch.nn.Parameter
    relative_position_index: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, G, P, D) -> (N, G, P, D)."""
        batch, groups, tokens, features = x.shape
        qkv = self.to_qkv(x).reshape(batch, groups, tokens, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (N, G, H, P, E)
        index = self.relative_position_index.view(self.max_seq_len, self.max_seq_len)
        bias = relative_position_bias(self.relative_position_bias_table, index, _samples(batch))
        out = MF.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale_factor)
        return self.merge(out.transpose(2, 3).reshape(batch, groups, tokens, features))
