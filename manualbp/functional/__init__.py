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
from manualbp.functional.dropout import DropoutFunction, dropout
from manualbp.functional.linear import LinearFunction, linear
from manualbp.functional.loss import (
    CrossEntropyFunction,
    MSELossFunction,
    NLLLossFunction,
    cross_entropy,
    mse_loss,
    nll_loss,
)
from manualbp.functional.shape import FlattenFunction, flatten

__all__ = [
    "CrossEntropyFunction",
    "DropoutFunction",
    "ELUFunction",
    "FlattenFunction",
    "GELUFunction",
    "LeakyReLUFunction",
    "LinearFunction",
    "LogSoftmaxFunction",
    "MSELossFunction",
    "NLLLossFunction",
    "ReLUFunction",
    "SiLUFunction",
    "SigmoidFunction",
    "SoftmaxFunction",
    "TanhFunction",
    "cross_entropy",
    "dropout",
    "elu",
    "flatten",
    "gelu",
    "leaky_relu",
    "linear",
    "log_softmax",
    "mse_loss",
    "nll_loss",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]
