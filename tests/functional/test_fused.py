"""The fused ReLU + MaxPool2d beyond the registry cases: what it saves, what it rejects, ties, and lenet5 using it."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.models import lenet5
from manualbp.nn._base import manual_twin


def _saved(fn, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x)
    return saved


def test_saves_the_indices_and_its_output_not_the_relu_output():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    y = None

    def pool(x):
        nonlocal y
        y = MF.relu_max_pool2d(x, 2)

    indices, output, x_shape = _saved(pool, x)
    assert indices.dtype == torch.int64 and indices.shape == (4, 3, 4, 4)
    assert output.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()  # what the next layer keeps
    # the input's shape, as a one-element view (for symbolic sizes under torch.compile(dynamic=True))
    assert x_shape.shape == x.shape and x_shape.untyped_storage().nbytes() == x.element_size()


def test_ties_and_non_positive_windows_match_torch():
    x = torch.tensor([[[[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, -2.0], [-3.0, -1.0, 2.0, 2.0], [-1.0, -3.0, 2.0, 0.5]]]])
    x.requires_grad_(True)
    reference = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    y, expected = MF.relu_max_pool2d(x, 2), reference(x)
    assert_close(y, expected, rtol=0, atol=0)
    g = torch.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    (grad,) = torch.autograd.grad(y, x, g)
    (ref_grad,) = torch.autograd.grad(expected, x, g)
    assert_close(grad, ref_grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    "call, exception, pattern",
    [
        (lambda: MF.relu_max_pool2d(torch.randn(1, 1, 6, 6), 2, padding=2), ValueError, r"relu_max_pool2d: padding"),
        (lambda: MF.relu_max_pool2d(torch.randn(6, 6), 2), ValueError, "relu_max_pool2d"),
        (lambda: mnn.ReLUMaxPool2d(2, dilation=2), NotImplementedError, r"ReLUMaxPool2d: dilation=2"),
        (lambda: mnn.ReLUMaxPool2d(2, return_indices=True), NotImplementedError, r"ReLUMaxPool2d: return_indices"),
        (lambda: mnn.ReLUMaxPool2d(0), ValueError, r"ReLUMaxPool2d: kernel_size must be at least 1, got 0"),
        (lambda: mnn.LinearReLU(-1, 3), ValueError, r"LinearReLU: in_features must be at least 0, got -1"),
        (
            lambda: MF.linear_relu(torch.randn(2, 3), torch.randn(4, 5)),
            ValueError,
            r"linear_relu: input of shape \(2, 3\)",
        ),
        (
            lambda: MF.linear_relu(torch.randn(2, 3), torch.randn(4, 3).double()),
            TypeError,
            r"linear_relu: expected all tensors",
        ),
    ],
    ids=[
        "padding",
        "2d-input",
        "dilation",
        "return_indices",
        "module-kernel-0",
        "linear_relu-negative-features",
        "linear_relu-shape",
        "linear_relu-dtype",
    ],
)
def test_unsupported_configurations_are_named(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_a_kernel_of_more_than_255_positions_matches_torch():
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64, requires_grad=True)
    y, expected = MF.relu_max_pool2d(x, 16, 4), torch.nn.functional.max_pool2d(torch.relu(x), 16, 4)
    assert_close(y, expected, rtol=0, atol=0)
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(expected, x, g)[0], rtol=0, atol=0)


def test_is_not_registered_as_a_torch_twin():
    assert manual_twin(torch.nn.Sequential) is None
    assert not isinstance(mnn.ReLUMaxPool2d(2), manualbp.nn.ManualModule)
    assert repr(mnn.ReLUMaxPool2d(3, 2, 1, ceil_mode=True)) == (
        "manualbp.ReLUMaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)"
    )


def test_lenet5_fuses_relu_into_pooling_only_on_the_manual_relu_backend():
    assert isinstance(lenet5(backend="manual").pool1, mnn.ReLUMaxPool2d)
    assert "act1" not in dict(lenet5(backend="manual").named_children())
    assert isinstance(lenet5(activation="elu", backend="manual").pool1, mnn.MaxPool2d)
    assert isinstance(lenet5(backend="autograd").act1, torch.nn.ReLU)


def test_to_torch_turns_the_fused_layer_into_relu_then_max_pool():
    torch.manual_seed(0)
    manual = lenet5((1, 12, 12), backend="manual")
    twin = manualbp.to_torch(manual)
    assert not any(isinstance(m, (manualbp.nn.ManualModule, mnn.ReLUMaxPool2d)) for m in twin.modules())
    assert [type(m) for m in twin.pool1] == [torch.nn.ReLU, torch.nn.MaxPool2d]
    assert list(twin.state_dict()) == list(manual.state_dict())
    x = torch.randn(3, 1, 12, 12)
    assert_close(twin(x), manual(x))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_large_inputs_pooled_in_channels_last_give_torch_values_indices_and_gradients(memory_format):
    """From CHANNELS_LAST_MIN_ELEMENTS on, the CPU pools run on a channels_last copy (faster there):
    outputs come back in the input's layout (as torch's), the input is left untouched, the numbers are torch's."""
    from manualbp.functional.pooling import CHANNELS_LAST_MIN_ELEMENTS

    x = torch.randn(4, 8, 32, 32).contiguous(memory_format=memory_format).requires_grad_()
    assert x.numel() >= CHANNELS_LAST_MIN_ELEMENTS
    before = x.detach().clone()
    g = torch.randn(4, 8, 16, 16)

    y, indices = MF.max_pool2d(x, 2, return_indices=True)
    ref_y, ref_indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    assert y.is_contiguous(memory_format=memory_format) and indices.is_contiguous(memory_format=memory_format)
    assert torch.equal(y, ref_y) and torch.equal(indices, ref_indices)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref_y, x, g)[0], rtol=0, atol=0)

    fused = MF.relu_max_pool2d(x, 2)
    reference = torch.nn.functional.max_pool2d(torch.relu(x), 2)
    assert fused.is_contiguous(memory_format=memory_format) and torch.equal(fused, reference)
    assert_close(torch.autograd.grad(fused, x, g)[0], torch.autograd.grad(reference, x, g)[0], rtol=0, atol=0)
    assert torch.equal(x.detach(), before)  # the in-place ReLU ran on a copy
