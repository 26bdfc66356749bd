"""Hand-differentiated counterparts of ``torch.nn.functional``.

Each function validates its arguments and calls a ``torch.autograd.Function`` whose backward is
written out by hand; the Function classes are exported too, for reading and for reuse.
"""

from manualbp.functional.activation import (
    ELUFunction,
    GELUFunction,
    LeakyReLUFunction,
    LogSoftmaxFunction,
    ReLUFunction,
    SigmoidFunction,
    SiLUFunction,
    SoftmaxFunction,
    TanhFunction,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from manualbp.functional.conv import Conv2dFunction, conv2d
from manualbp.functional.dropout import DropoutFunction, dropout
from manualbp.functional.fused import LinearReLUFunction, ReLUMaxPool2dFunction, linear_relu, relu_max_pool2d
from manualbp.functional.linear import LinearFunction, linear
from manualbp.functional.loss import (
    CrossEntropyFunction,
    MSELossFunction,
    NLLLossFunction,
    cross_entropy,
    mse_loss,
    nll_loss,
)
from manualbp.functional.normalization import BatchNormFunction, LayerNormFunction, batch_norm, layer_norm
from manualbp.functional.pooling import (
    AdaptiveAvgPool2dFunction,
    AvgPool2dFunction,
    MaxPool2dFunction,
    adaptive_avg_pool2d,
    avg_pool2d,
    max_pool2d,
)
from manualbp.functional.shape import FlattenFunction, flatten

__all__ = [
    "AdaptiveAvgPool2dFunction",
    "AvgPool2dFunction",
    "BatchNormFunction",
    "Conv2dFunction",
    "CrossEntropyFunction",
    "DropoutFunction",
    "ELUFunction",
    "FlattenFunction",
    "GELUFunction",
    "LayerNormFunction",
    "LeakyReLUFunction",
    "LinearFunction",
    "LinearReLUFunction",
    "LogSoftmaxFunction",
    "MSELossFunction",
    "MaxPool2dFunction",
    "NLLLossFunction",
    "ReLUFunction",
    "ReLUMaxPool2dFunction",
    "SiLUFunction",
    "SigmoidFunction",
    "SoftmaxFunction",
    "TanhFunction",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "dropout",
    "elu",
    "flatten",
    "gelu",
    "layer_norm",
    "leaky_relu",
    "linear",
    "linear_relu",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "relu",
    "relu_max_pool2d",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]
