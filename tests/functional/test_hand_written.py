"""Properties of every registry op beyond what the verify battery compares (tests/verify/test_builtin_ops.py):
the backward is hand-written (no PyTorch backward kernel, nothing stored on ctx), outputs carry a custom
Function node, and extreme inputs stay finite."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from manualbp.verify import differentiable, seeded
from tests.conftest import CASES


def _outputs(module, args) -> list[torch.Tensor]:
    """The module's output tensors that carry a gradient, however nested (an LSTM's (output, (h_n, c_n)))."""
    return [o for o in tree_leaves(seeded(module)(*args)) if isinstance(o, torch.Tensor) and o.requires_grad]


def _outputs_and_grads(module, args):
    outs = _outputs(module, args)
    wrt = differentiable(args) + [p for p in module.parameters() if p.requires_grad]
    return [o.detach() for o in outs], torch.autograd.grad(
        outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True
    )


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_are_finite(case):
    manual, _ = case.build(torch.float32)
    args = case.sample(torch.float32)
    outs, grads = _outputs_and_grads(manual, args)
    assert all(torch.isfinite(out).all() for out in outs)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()


@pytest.mark.parametrize("case", CASES)
def test_output_grad_fn_is_a_custom_function(case):
    manual, _ = case.build(torch.float64)
    for out in _outputs(manual, case.sample(torch.float64)):
        assert isinstance(out.grad_fn, torch.autograd.function.BackwardCFunction), type(out.grad_fn).__name__


@pytest.mark.parametrize("case", CASES)
def test_tensors_are_saved_only_through_save_for_backward(case):
    manual, _ = case.build(torch.float64)
    for out in _outputs(manual, case.sample(torch.float64)):
        stray = [name for name, value in vars(out.grad_fn).items() if isinstance(value, torch.Tensor)]
        assert stray == [], f"tensors stored on ctx: {stray}"


class _AtenOpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES)
def test_backward_runs_no_pytorch_backward_kernel(case):
    """The backward is hand-written: none of the aten ops it dispatches is a ``*_backward`` kernel."""
    manual, _ = case.build(torch.float64)
    args = case.sample(torch.float64)
    outs = _outputs(manual, args)
    wrt = differentiable(args) + list(manual.parameters())
    with _AtenOpLog() as log:
        torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True)
    assert log.ops, "the backward dispatched no op at all"
    kernels = sorted({op for op in log.ops if "backward" in op})
    assert kernels == [], f"PyTorch backward kernels called: {kernels}"
