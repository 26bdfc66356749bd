"""manualbp.nn.Embedding: torch.nn.Embedding with a hand-written backward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.functional.embedding import embedding_padding_idx
from manualbp.nn._base import ManualModule, layer_name


class Embedding(ManualModule, torch.nn.Embedding):
    """A lookup table y = W[input], as ``torch.nn.Embedding`` (same arguments, ``weight``, init, repr, and
    ``from_pretrained``): padding_idx (its row initialised to zero and given no gradient), max_norm with norm_type
    (the rows read renormalised in place in the forward), scale_grad_by_freq.

    input: (*) integer indices -> y: (*, embedding_dim); backward in ``manualbp.functional.EmbeddingFunction``.
    ``sparse=True`` (a sparse gradient) is not supported: NotImplementedError where the layer is built
    (``manualbp.convert`` leaves such a layer as torch.nn).
    """

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        name = layer_name(self)
        check_int(name, "num_embeddings", arguments["num_embeddings"], 0)
        check_int(name, "embedding_dim", arguments["embedding_dim"], 0)
        embedding_padding_idx(name, arguments["padding_idx"], arguments["num_embeddings"])

    def check_supported(self) -> None:
        if self.sparse:
            raise NotImplementedError(
                f"{layer_name(self)}: sparse=True (a sparse COO gradient of the weight) is not supported by "
                "manualbp; use sparse=False"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
