"""Hand-differentiated counterparts of ``torch.nn.functional``.

Each function validates its arguments and calls a ``torch.autograd.Function`` whose backward is
written out by hand; the Function classes are exported too, for reading and for reuse.
"""

from manualbp.functional.activation import (
    ELUFunction,
    ELUInplaceFunction,
    GELUFunction,
    LeakyReLUFunction,
    LeakyReLUInplaceFunction,
    LogSoftmaxFunction,
    ReLU6Function,
    ReLU6InplaceFunction,
    ReLUFunction,
    ReLUInplaceFunction,
    SigmoidFunction,
    SiLUFunction,
    SiLUInplaceFunction,
    SoftmaxFunction,
    TanhFunction,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from manualbp.functional._inplace import CopyFunction
from manualbp.functional.conv import Conv2dFunction, conv2d
from manualbp.functional.dropout import DropoutFunction, DropoutInplaceFunction, dropout
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
    "CopyFunction",
    "CrossEntropyFunction",
    "DropoutFunction",
    "DropoutInplaceFunction",
    "ELUFunction",
    "ELUInplaceFunction",
    "FlattenFunction",
    "GELUFunction",
    "LayerNormFunction",
    "LeakyReLUFunction",
    "LeakyReLUInplaceFunction",
    "LinearFunction",
    "LinearReLUFunction",
    "LogSoftmaxFunction",
    "MSELossFunction",
    "MaxPool2dFunction",
    "NLLLossFunction",
    "ReLU6Function",
    "ReLU6InplaceFunction",
    "ReLUFunction",
    "ReLUInplaceFunction",
    "ReLUMaxPool2dFunction",
    "SiLUFunction",
    "SiLUInplaceFunction",
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
    "relu6",
    "relu_max_pool2d",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]
