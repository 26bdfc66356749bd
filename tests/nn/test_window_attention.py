"""Swin's and MaxViT's window attention twins: whole (tiny) models converted leave nothing of torch's that computes,
and their outputs and every gradient equal the torch model's in float64; the full-size models convert whole."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.testing import assert_close
from torchvision import models
from torchvision.models import maxvit, swin_transformer

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.convert import layer_summary
from manualbp.per_sample import PerSampleError

TOL = dict(rtol=1e-10, atol=1e-12)


def _tiny_swin(v2: bool) -> torch.nn.Module:
    """Two stages on a 8x8 then 4x4 grid with 2x2 windows: shifted and unshifted blocks in both."""
    extra = (
        dict(block=swin_transformer.SwinTransformerBlockV2, downsample_layer=swin_transformer.PatchMergingV2)
        if v2
        else {}
    )
    return swin_transformer.SwinTransformer(
        patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2], num_classes=5, **extra
    )


def _tiny_maxvit() -> torch.nn.Module:
    return maxvit.MaxVit(
        input_size=(16, 16),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )


def _assert_converted_equal(model: torch.nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    reference = model.double().eval()
    manual = manualbp.convert(copy.deepcopy(reference), strict=True)
    assert not layer_summary(manual)["torch"], layer_summary(manual)["torch"]
    inputs = [x.double().clone().requires_grad_() for _ in range(2)]
    outputs = [net(i) for net, i in zip((reference, manual), inputs)]
    assert_close(outputs[1], outputs[0], **TOL)
    r = torch.randn_like(outputs[0])
    for out in outputs:
        (out * r).sum().backward()
    assert_close(inputs[1].grad, inputs[0].grad, **TOL)
    for (name, p), q in zip(reference.named_parameters(), manual.parameters()):
        assert_close(q.grad, p.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_tiny_swin_window_attention_converted_equals_torch(v2):
    torch.manual_seed(0)
    _assert_converted_equal(_tiny_swin(v2), torch.randn(2, 3, 16, 16))


def test_tiny_maxvit_converted_equals_torch():
    torch.manual_seed(0)
    _assert_converted_equal(_tiny_maxvit(), torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t", "maxvit_t"])
def test_full_size_models_convert_whole(name):
    model = manualbp.convert(getattr(models, name)(num_classes=10), strict=True)
    assert not layer_summary(model)["torch"]
    kinds = layer_summary(model)["manual"]
    assert (
        kinds["RelativePositionalMultiHeadAttention" if name == "maxvit_t" else "ShiftedWindowAttention"]
        or kinds["ShiftedWindowAttentionV2"]
    )


def test_window_attention_padding_and_odd_sizes_equal_torch():
    """A 5x4 map under 3x3 windows: padded to 6x6, shifted by 1."""
    torch.manual_seed(0)
    reference = swin_transformer.ShiftedWindowAttention(8, [3, 3], [1, 1], 2).double()
    manual = mnn.ShiftedWindowAttention.from_torch(copy.deepcopy(reference))
    x = torch.randn(2, 5, 4, 8, dtype=torch.float64)
    assert_close(manual(x), reference(x), **TOL)


def test_window_attention_twins_state_dicts_move_both_ways():
    for torch_cls, ctor in (
        (swin_transformer.ShiftedWindowAttention, (8, [2, 2], [1, 1], 2)),
        (swin_transformer.ShiftedWindowAttentionV2, (8, [2, 2], [1, 1], 2)),
        (maxvit.RelativePositionalMultiHeadAttention, (8, 4, 4)),
    ):
        manual, reference = getattr(mnn, torch_cls.__name__)(*ctor), torch_cls(*ctor)
        assert manual.state_dict().keys() == reference.state_dict().keys()
        manual.load_state_dict(reference.state_dict())
        reference.load_state_dict(manual.state_dict())
        assert repr(manual).startswith(f"manualbp.{torch_cls.__name__}(")


def test_v2_keys_bias_gets_no_gradient():
    torch.manual_seed(0)
    manual = mnn.ShiftedWindowAttentionV2(6, [2, 2], [0, 0], 2).double()
    manual(torch.randn(2, 4, 4, 6, dtype=torch.float64)).sum().backward()
    grad = manual.qkv.bias.grad
    assert torch.all(grad[6:12] == 0) and grad[:6].abs().sum() > 0 and grad[12:].abs().sum() > 0


def test_v2_per_sample_needs_the_forward_inside_the_context():
    """Swin V2's table comes from cpb_mlp on coordinates without a batch dim; inside a per-sample context the
    forward gives them every sample. A forward run outside and a backward inside: PerSampleError, not a number."""
    torch.manual_seed(0)
    manual = mnn.ShiftedWindowAttentionV2(6, [2, 2], [1, 1], 2).double()
    y = manual(torch.randn(3, 4, 4, 6, dtype=torch.float64))
    with pytest.raises(PerSampleError, match="batches of different sizes"), manualbp.per_sample_grads(manual, "sum"):
        y.sum().backward()


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (4,)])
def test_normalize_equals_torch_and_gradchecks(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for dim in range(-len(shape), len(shape)):
        assert_close(MF.normalize(x, dim=dim), torch.nn.functional.normalize(x, dim=dim), **TOL)
        assert torch.autograd.gradcheck(lambda t, dim=dim: MF.normalize(t, dim=dim), (x,))
        assert torch.autograd.gradgradcheck(lambda t, dim=dim: MF.normalize(t, dim=dim), (x,))


def test_normalize_below_eps_is_a_scale():
    """Rows of norm below eps are divided by eps: the gradient is dL/dy / eps, as torch's."""
    x = torch.tensor([[1e-14, -2e-14], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    y = MF.normalize(x, dim=1, eps=1e-12)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    x_ref = x.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(torch.nn.functional.normalize(x_ref, dim=1, eps=1e-12), x_ref, g)
    assert_close(grad, expected, **TOL)
    assert_close(grad[0], g[0] / 1e-12)


def test_normalize_other_p_is_not_supported():
    with pytest.raises(NotImplementedError, match="p=2"):
        MF.normalize(torch.randn(2, 3), p=1.0)


def test_exp_scale_clamps_at_log_100():
    """Above log 100 the scale is 100 and τ gets no gradient; below, dL/dτ = Σ dL/dy ⊙ y."""
    from manualbp.functional.window_attention import exp_scale

    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    tau = torch.tensor([[[math.log(200.0)]], [[0.5]]], dtype=torch.float64, requires_grad=True)
    y = exp_scale(x, tau, math.log(100.0))
    assert_close(y[:, 0], x[:, 0] * 100.0)
    (grad,) = torch.autograd.grad(y.sum(), tau)
    assert grad[0].item() == 0.0
    assert_close(grad[1, 0, 0], y[:, 1].sum())
