"""Fused ops: two layers in one Function, so that backward keeps less, and runs fewer kernels, than the two
would apart. One file per fusion, named after the ops it fuses in the order they run:

* ``linear_relu``: y = max(x W^T + b, 0) (``manualbp.nn.LinearReLU``);
* ``relu_max_pool2d``: y = max_pool2d(max(x, 0)) (``manualbp.nn.ReLUMaxPool2d``).
"""

from manualbp.functional.fused.linear_relu import LinearReLUFunction, linear_relu
from manualbp.functional.fused.relu_max_pool2d import ReLUMaxPool2dFunction, relu_max_pool2d

__all__ = ["LinearReLUFunction", "ReLUMaxPool2dFunction", "linear_relu", "relu_max_pool2d"]
