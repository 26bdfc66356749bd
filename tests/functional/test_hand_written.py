"""Every op case in the registry against its torch twin: values, gradients, second derivatives."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from manualbp.verify import as_function, differentiable, seeded
from tests.conftest import CASES, CASES_WITH_PARAMETERS, CASES_WITH_SEVERAL_INPUTS


def _outputs_and_grads(module, args, grad_out=None):
    """Forward under a fixed seed, backward with ``grad_out`` (ones by default); returns
    (output, grads of the differentiable inputs, grads of the parameters that require grad)."""
    out = seeded(module)(*args)
    if grad_out is None:
        grad_out = torch.ones_like(out)
    wrt = differentiable(args) + [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
    return out.detach(), grads


def _compare(case, dtype, make_grad_out=None, freeze_params=False, inputs_require_grad=True):
    manual, reference = case.build(dtype)
    for module in (manual, reference):
        module.requires_grad_(not freeze_params)
    args_m = case.sample(dtype, requires_grad=inputs_require_grad)
    args_r = case.sample(dtype, requires_grad=inputs_require_grad)
    out_shape = seeded(reference)(*args_r).shape
    grad_out = make_grad_out(out_shape, dtype) if make_grad_out else None
    out_m, grads_m = _outputs_and_grads(manual, args_m, grad_out)
    out_r, grads_r = _outputs_and_grads(reference, args_r, grad_out)
    assert_close(out_m, out_r)
    assert len(grads_m) == len(grads_r)
    for g_m, g_r in zip(grads_m, grads_r):
        assert (g_m is None) == (g_r is None)
        if g_r is not None:
            assert_close(g_m, g_r)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_forward_and_gradients_match_torch(case, dtype):
    _compare(case, dtype)


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_are_finite(case):
    manual, _ = case.build(torch.float32)
    args = case.sample(torch.float32)
    out, grads = _outputs_and_grads(manual, args)
    assert torch.isfinite(out).all()
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()


def _noncontiguous(shape, dtype):
    # Every other element of a tensor twice as long in the last dim: a strided view.
    g = torch.randn(*shape, 2, dtype=dtype)[..., 0]
    assert g.dim() == 0 or not g.is_contiguous()
    return g


def _expanded(shape, dtype):
    return torch.randn((), dtype=dtype).expand(shape)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("make_grad_out", [_noncontiguous, _expanded], ids=["noncontiguous", "expanded"])
def test_strided_grad_output(case, make_grad_out):
    _compare(case, torch.float64, make_grad_out=make_grad_out)


@pytest.mark.parametrize("case", CASES_WITH_PARAMETERS)
def test_only_inputs_require_grad(case):
    _compare(case, torch.float64, freeze_params=True)


@pytest.mark.parametrize("case", CASES_WITH_PARAMETERS)
def test_only_parameters_require_grad(case):
    _compare(case, torch.float64, inputs_require_grad=False)


@pytest.mark.parametrize("case", CASES_WITH_SEVERAL_INPUTS)
def test_first_input_only_requires_grad(case):
    """With several differentiable inputs (mse's target, soft targets), only the first requires grad."""
    manual, reference = case.build(torch.float64)
    results = []
    for module in (manual, reference):
        args = case.sample(torch.float64)
        for extra in differentiable(args)[1:]:
            extra.requires_grad_(False)
        out = seeded(module)(*args)
        (grad,) = torch.autograd.grad(out.sum(), differentiable(args)[0])
        results.append(grad)
    assert_close(*results)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case):
    manual, _ = case.build(torch.float64)
    fn, tensors = as_function(manual, case.sample(torch.float64))
    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck(case):
    manual, _ = case.build(torch.float64)
    fn, tensors = as_function(manual, case.sample(torch.float64))
    assert torch.autograd.gradgradcheck(fn, tensors)


@pytest.mark.parametrize("case", CASES)
def test_second_derivatives_match_torch(case):
    """Double backward: d/dx of <dL/dx, v> for a fixed v, manual against torch."""
    results = []
    for module in case.build(torch.float64):
        args = case.sample(torch.float64)
        wrt = differentiable(args) + list(module.parameters())
        out = seeded(module)(*args)
        grads = torch.autograd.grad(out, wrt, torch.ones_like(out), create_graph=True)
        probe = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).reshape(g.shape)).sum() for g in grads)
        if probe.requires_grad:
            results.append(torch.autograd.grad(probe, wrt, allow_unused=True, materialize_grads=True))
        else:  # the first derivative does not depend on the inputs: the second one is zero
            results.append(tuple(torch.zeros_like(w) for w in wrt))
    assert_close(results[0], results[1])


@pytest.mark.parametrize("case", CASES)
def test_output_grad_fn_is_a_custom_function(case):
    manual, _ = case.build(torch.float64)
    out = seeded(manual)(*case.sample(torch.float64))
    assert isinstance(out.grad_fn, torch.autograd.function.BackwardCFunction), type(out.grad_fn).__name__


@pytest.mark.parametrize("case", CASES)
def test_tensors_are_saved_only_through_save_for_backward(case):
    manual, _ = case.build(torch.float64)
    out = seeded(manual)(*case.sample(torch.float64))
    ctx = out.grad_fn
    stray = [name for name, value in vars(ctx).items() if isinstance(value, torch.Tensor)]
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
    out = seeded(manual)(*args)
    wrt = differentiable(args) + list(manual.parameters())
    with _AtenOpLog() as log:
        torch.autograd.grad(out, wrt, torch.ones_like(out))
    assert log.ops, "the backward dispatched no op at all"
    kernels = sorted({op for op in log.ops if "backward" in op})
    assert kernels == [], f"PyTorch backward kernels called: {kernels}"
