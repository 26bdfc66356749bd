"""``torch.nn``-compatible layers whose backward passes are written by hand.

Each layer subclasses its ``torch.nn`` twin (same constructor, parameters, buffers, init and repr),
so state dicts move both ways and ``isinstance(layer, torch.nn.Linear)`` still holds. The fused layers are
the exception, having no torch.nn class of their own: ``ReLUMaxPool2d`` (ReLU + MaxPool2d; its autograd
counterpart, which ``to_torch`` returns, is ``torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(...))``)
and ``LinearReLU`` (Linear + ReLU with Linear's constructor and parameters; counterpart ``AutogradLinearReLU``).

The twins of torchvision's vision transformer (``VisionTransformer``, ``Encoder``) and of ``torchvision.ops``
(``StochasticDepth``), and ConvNeXt's ``LayerNorm2d``, load torchvision, so they load on first use: as attributes of this package, or when ``manualbp.convert`` meets a torchvision module.
"""

import importlib

from manualbp.nn._base import ManualModule, manual_twin
from manualbp.nn.activation import (
    CELU,
    ELU,
    GELU,
    SELU,
    Hardsigmoid,
    Hardswish,
    LeakyReLU,
    LogSigmoid,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Softsign,
    Tanh,
)
from manualbp.nn.attention import MultiheadAttention
from manualbp.nn.conv import Conv1d, Conv2d, Conv3d
from manualbp.nn.conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from manualbp.nn.dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from manualbp.nn.embedding import Embedding
from manualbp.nn.fused import AutogradLinearReLU, LinearReLU, ReLUMaxPool2d
from manualbp.nn.linear import Linear, NonDynamicallyQuantizableLinear
from manualbp.nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from manualbp.nn.normalization import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
)
from manualbp.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from manualbp.nn.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from manualbp.nn.shape import Flatten
from manualbp.nn.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "CELU",
    "ELU",
    "GELU",
    "GRU",
    "LSTM",
    "RNN",
    "SELU",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AutogradLinearReLU",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CNBlock",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "Embedding",
    "Encoder",
    "Flatten",
    "GRUCell",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LSTMCell",
    "LayerNorm",
    "LayerNorm2d",
    "LeakyReLU",
    "Linear",
    "LinearReLU",
    "LogSigmoid",
    "LogSoftmax",
    "MSELoss",
    "ManualModule",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Mish",
    "MultiheadAttention",
    "NLLLoss",
    "NonDynamicallyQuantizableLinear",
    "PReLU",
    "Permute",
    "RMSNorm",
    "RNNCell",
    "ReLU",
    "ReLU6",
    "ReLUMaxPool2d",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Softsign",
    "StochasticDepth",
    "Tanh",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "VisionTransformer",
    "manual_twin",
]


def __getattr__(name: str) -> object:
    if name in _TORCHVISION_TWINS:
        return getattr(importlib.import_module(_TORCHVISION_TWINS[name]), name)
    raise AttributeError(f"module 'manualbp.nn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TORCHVISION_TWINS})


#: The twins of torchvision's classes, by name, with the module each loads from on first use
_TORCHVISION_TWINS = {
    "Encoder": "manualbp.nn.vision_transformer",
    "VisionTransformer": "manualbp.nn.vision_transformer",
    "StochasticDepth": "manualbp.nn.torchvision_ops",
    "LayerNorm2d": "manualbp.nn.torchvision_ops",
    "CNBlock": "manualbp.nn.convnext",
    "Permute": "manualbp.nn.convnext",
    "ShiftedWindowAttention": "manualbp.nn.window_attention",
    "ShiftedWindowAttentionV2": "manualbp.nn.window_attention",
    "RelativePositionalMultiHeadAttention": "manualbp.nn.window_attention",
}
