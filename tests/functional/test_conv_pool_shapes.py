"""Convolution and pooling beyond the drawn configurations of ``tests/fuzz`` (which compare every
geometry's values, first and second derivatives with torch): windows of padding only, the indices
max_pool2d returns, and composition with torch.func.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn
from tests.fuzz.strategies import max_pool2d_by_explicit_padding


def test_max_pool2d_windows_of_padding_only_pass_no_gradient():
    # rows -1 and 2 of a 2-row input: every window's taps miss it (this only happens to all windows at once)
    x = torch.randn(2, 3, 2, 7, dtype=torch.float64, requires_grad=True)
    args = dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(3, 2), ceil_mode=True)
    y = MF.max_pool2d(x, **args)
    assert torch.isinf(y).all()
    assert_close(y, F.max_pool2d(x.detach(), **args))
    grad_out = torch.randn(y.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    assert_close(grad, torch.autograd.grad(max_pool2d_by_explicit_padding(x, **args), x, grad_out)[0])
    assert_close(grad, torch.zeros_like(x), rtol=0, atol=0)


def test_max_pool2d_return_indices_like_torch():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    values, indices = MF.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    ref_values, ref_indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert_close(values, ref_values)
    assert indices.dtype == torch.int64 and torch.equal(indices, ref_indices)
    assert not indices.requires_grad
    assert isinstance(values.grad_fn, torch.autograd.function.BackwardCFunction)
    module_values, module_indices = mnn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)(x)
    assert_close(module_values, ref_values)
    assert torch.equal(module_indices, ref_indices)
    (grad,) = torch.autograd.grad(values.sum(), x)
    (ref_grad,) = torch.autograd.grad(ref_values.sum(), x)
    assert_close(grad, ref_grad)


def test_functions_compose_with_vmap_and_grad():
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)

    def loss(manual, x):
        conv = MF.conv2d if manual else F.conv2d
        maxp = MF.max_pool2d if manual else F.max_pool2d
        avgp = MF.avg_pool2d if manual else F.avg_pool2d
        adap = MF.adaptive_avg_pool2d if manual else F.adaptive_avg_pool2d
        h = maxp(conv(x, w, None, 1, "same"), 2, ceil_mode=True)
        return (adap(avgp(h, 2, 1, 1), (2, None)) ** 2).sum()

    grads = [torch.func.vmap(torch.func.grad(lambda x, m=manual: loss(m, x)))(x) for manual in (True, False)]
    assert_close(*grads)
