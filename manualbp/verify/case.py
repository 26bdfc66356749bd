"""OpCase: one configuration of one op, as a manual module, its reference twin and inputs for both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

InputMaker = Callable[[torch.Generator], Sequence[Any]]


@dataclass(frozen=True)
class OpCase:
    """A manual module, the reference module it must agree with, and the inputs to call both on.

    ``inputs(generator)`` returns the positional arguments in float64 on the CPU; ``sample`` casts the
    floating tensors to the dtype and device under test. Floating tensors among the arguments and
    the modules' parameters are the differentiable inputs; other arguments (class targets, ints)
    are constants. ``train`` selects the modules' mode. Calls are made under a fixed seed
    (``seeded``), so random layers draw the same numbers on both sides and on every call.
    ``is_twin``: the manual module is the torch twin of the reference (a ``manualbp.nn`` layer subclassing
    the reference's ``torch.nn`` class, same constructor, repr and state); False for a manual module whose
    reference is a composition of torch layers (a fused layer), for which only the numbers are compared.
    ``batch_dim``: the batch dim of the first input (``verify``'s ``batch_dim``): 1 for a sequence in
    (T, N, features), None for an unbatched sequence.
    ``unsupported``: (check, reason) pairs for the checks that cannot apply to this configuration (``verify``'s
    ``unsupported``): gradcheck where the gradient is by definition not the derivative of the forward (an
    embedding's padding row, ``scale_grad_by_freq``, ``max_norm``'s renorm of the weight in the forward).
    """

    id: str
    manual: Callable[[], torch.nn.Module]
    reference: Callable[[], torch.nn.Module]
    inputs: InputMaker
    train: bool = True
    is_twin: bool = True
    batch_dim: int | None = 0
    unsupported: tuple[tuple[str, str], ...] = ()

    def build(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The manual and reference modules with identical state, in ``dtype`` on ``device``."""
        manual = self.manual().to(device=device, dtype=dtype)
        reference = self.reference().to(device=device, dtype=dtype)
        reference.load_state_dict(manual.state_dict())
        manual.train(self.train)
        reference.train(self.train)
        return manual, reference

    def sample(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", requires_grad: bool = True
    ) -> tuple[Any, ...]:
        """Fresh inputs: floating tensors cast to ``dtype`` and marked ``requires_grad``."""
        generator = torch.Generator().manual_seed(0)
        args = []
        for arg in self.inputs(generator):
            if isinstance(arg, torch.Tensor):
                arg = arg.to(device=device, dtype=dtype if arg.is_floating_point() else arg.dtype)
                arg.requires_grad_(requires_grad and arg.is_floating_point())
            args.append(arg)
        return tuple(args)


def seeded(fn: Callable[..., Any], seed: int = 0) -> Callable[..., Any]:
    """``fn`` wrapped to run under ``torch.manual_seed(seed)`` without disturbing the global RNG."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(*args, **kwargs)

    return call


def differentiable(args: Sequence[Any]) -> list[torch.Tensor]:
    """The tensors among ``args`` that require grad."""
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
