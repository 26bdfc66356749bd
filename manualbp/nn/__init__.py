"""``torch.nn``-compatible layers whose backward passes are written by hand.

Each layer subclasses its ``torch.nn`` twin (same constructor, parameters, buffers, init and repr),
so state dicts move both ways and ``isinstance(layer, torch.nn.Linear)`` still holds.
"""

from manualbp.nn._base import ManualModule, manual_twin
from manualbp.nn.activation import ELU, GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from manualbp.nn.dropout import Dropout
from manualbp.nn.linear import Linear
from manualbp.nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from manualbp.nn.shape import Flatten

__all__ = [
    "ELU",
    "GELU",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "ManualModule",
    "NLLLoss",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "manual_twin",
]
