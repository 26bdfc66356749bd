"""Fused layers: two torch.nn layers in one hand-differentiated op. Not torch twins (torch.nn has no such
class), so they are plain ``torch.nn.Module`` subclasses, not ``ManualModule``s (which would register a
twin); each names its autograd counterpart through ``to_torch``."""

from __future__ import annotations

import torch

from manualbp import functional as MF


class ReLUMaxPool2d(torch.nn.Module):
    """``torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=...))``
    as one layer whose backward keeps a one-byte window index per output instead of the ReLU output and
    int64 pooling indices; backward in ``manualbp.functional.ReLUMaxPool2dFunction``.

    The arguments are ``torch.nn.MaxPool2d``'s, in its order; ``dilation`` other than 1 and
    ``return_indices=True`` raise ``NotImplementedError``. No parameters or buffers.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if dilation not in (1, (1, 1), [1, 1]):
            raise NotImplementedError(f"manualbp.nn.ReLUMaxPool2d: dilation={dilation!r} is not supported (only 1)")
        if return_indices:
            raise NotImplementedError(
                "manualbp.nn.ReLUMaxPool2d: return_indices=True is not supported (the layer keeps window "
                "indices, not torch's plane indices)"
            )
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.relu_max_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"

    def _get_name(self) -> str:
        return "manualbp." + type(self).__name__

    def to_torch(self) -> torch.nn.Sequential:
        """The autograd counterpart: ``Sequential(ReLU(), MaxPool2d(...))`` with this configuration, in this mode."""
        twin = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.MaxPool2d(self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        )
        return twin.train(self.training)
