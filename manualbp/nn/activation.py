"""Activation layers: the torch.nn twins with hand-written backward passes."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_choice, check_real
from manualbp.functional.activation import GELU_APPROXIMATIONS
from manualbp.nn._base import ManualModule, layer_name


class ReLU(ManualModule, torch.nn.ReLU):
    """max(x, 0) as ``torch.nn.ReLU``; with ``inplace=True`` written into the input (backward from the output)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.relu(input, self.inplace)


class ReLU6(ManualModule, torch.nn.ReLU6):
    """min(max(x, 0), 6) as ``torch.nn.ReLU6``; with ``inplace=True`` written into the input (backward from
    the output)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.relu6(input, self.inplace)


class LeakyReLU(ManualModule, torch.nn.LeakyReLU):
    """x or negative_slope·x as ``torch.nn.LeakyReLU``; with ``inplace=True`` written into the input (backward
    from the output; with a gradient, negative_slope >= 0, as in torch)."""

    def check_supported(self) -> None:
        check_real(layer_name(self), "negative_slope", self.negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.leaky_relu(input, self.negative_slope, self.inplace)


class ELU(ManualModule, torch.nn.ELU):
    """x or α(e^x - 1) as ``torch.nn.ELU``; with ``inplace=True`` written into the input (backward from the
    output; with a gradient, alpha >= 0, as in torch)."""

    def check_supported(self) -> None:
        check_real(layer_name(self), "alpha", self.alpha)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.elu(input, self.alpha, self.inplace)


class Sigmoid(ManualModule, torch.nn.Sigmoid):
    """1 / (1 + e^-x) as ``torch.nn.Sigmoid``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.sigmoid(input)


class Tanh(ManualModule, torch.nn.Tanh):
    """tanh(x) as ``torch.nn.Tanh``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.tanh(input)


class GELU(ManualModule, torch.nn.GELU):
    """x Φ(x) (or its tanh approximation) as ``torch.nn.GELU``."""

    def check_supported(self) -> None:
        check_choice(layer_name(self), "approximate", self.approximate, GELU_APPROXIMATIONS)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.gelu(input, self.approximate)


class SiLU(ManualModule, torch.nn.SiLU):
    """x σ(x) as ``torch.nn.SiLU``; with ``inplace=True`` written into the input (the backward keeps a copy of
    the input, as torch's does)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.silu(input, self.inplace)


class Softmax(ManualModule, torch.nn.Softmax):
    """softmax along ``dim`` as ``torch.nn.Softmax``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.softmax(input, self.dim)


class LogSoftmax(ManualModule, torch.nn.LogSoftmax):
    """log-softmax along ``dim`` as ``torch.nn.LogSoftmax``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.log_softmax(input, self.dim)


class Hardswish(ManualModule, torch.nn.Hardswish):
    """x · relu6(x + 3) / 6 as ``torch.nn.Hardswish``; with ``inplace=True`` written into the input (the backward
    keeps a copy of the input). Formula and derivative: ``manualbp.functional.elementwise``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.hardswish(input, self.inplace)


class Hardsigmoid(ManualModule, torch.nn.Hardsigmoid):
    """relu6(x + 3) / 6 as ``torch.nn.Hardsigmoid``; with ``inplace=True`` written into the input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.hardsigmoid(input, self.inplace)


class Mish(ManualModule, torch.nn.Mish):
    """x · tanh(softplus(x)) as ``torch.nn.Mish``; with ``inplace=True`` written into the input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.mish(input, self.inplace)


class Softplus(ManualModule, torch.nn.Softplus):
    """log(1 + e^{βx}) / β (x where βx > threshold) as ``torch.nn.Softplus``."""

    def check_supported(self) -> None:
        check_real(layer_name(self), "beta", self.beta)
        check_real(layer_name(self), "threshold", self.threshold)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.softplus(input, self.beta, self.threshold)


class SELU(ManualModule, torch.nn.SELU):
    """λ x or λ α (e^x - 1) as ``torch.nn.SELU``; with ``inplace=True`` written into the input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.selu(input, self.inplace)


class CELU(ManualModule, torch.nn.CELU):
    """x or α (e^{x/α} - 1) as ``torch.nn.CELU``; with ``inplace=True`` written into the input."""

    def check_supported(self) -> None:
        check_real(layer_name(self), "alpha", self.alpha)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.celu(input, self.alpha, self.inplace)


class LogSigmoid(ManualModule, torch.nn.LogSigmoid):
    """log σ(x) as ``torch.nn.LogSigmoid``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.logsigmoid(input)


class Softsign(ManualModule, torch.nn.Softsign):
    """x / (1 + |x|) as ``torch.nn.Softsign``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.softsign(input)


class PReLU(ManualModule, torch.nn.PReLU):
    """max(0, x) + a · min(0, x) as ``torch.nn.PReLU``, with a learnable slope a (``weight``: one, or one per
    channel, dim 1), through ``manualbp.functional.prelu`` (per-sample gradients of a included)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.prelu(input, self.weight)
