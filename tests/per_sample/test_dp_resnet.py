"""DP-SGD on GroupNorm networks (BatchNorm replaced as Opacus's ``ModuleValidator.fix`` does): manualbp's clipped
gradient equals Opacus's (hooks mode, σ = 0) in float64, on a small convnet and on resnet18; and
``manualbp.per_sample.batch_norm_to_group_norm`` builds the model Opacus's fix builds, manual where it was."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import torch
import torchvision
from opacus.validators import ModuleValidator
from torch.testing import assert_close

import manualbp
from manualbp.nn._base import ManualModule
from manualbp.per_sample import PerSampleError, batch_norm_to_group_norm

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# Opacus's module hooks on a model whose input needs no gradient: harmless
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(scope="module")
def bench():
    """experiments/bench_per_sample.py (its Opacus driver ``_opacus_private`` and ``resnet18_gn``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXPERIMENTS))
        yield importlib.import_module("bench_per_sample")


def _small_convnet() -> torch.nn.Sequential:
    """A convnet with BatchNorm (two of it, 8 and 16 channels) and a residual-free head."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )


def _data(n: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=g)


def _leaves(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def _manual_clip(model, x, y, max_norm, loss_reduction):
    model.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(model, max_norm, loss_reduction=loss_reduction) as clip:
        manualbp.functional.cross_entropy(model(x), y, reduction=loss_reduction).backward()
    return clip.norms.detach().clone(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _assert_clipped_like_opacus(bench, twin, manual, x, y, loss_reduction):
    """manualbp's clipped gradient (``clip_per_sample``, σ = 0) = Opacus's (hooks, σ = 0): its clipped sum
    (``p.summed_grad``) for "sum", its clipped mean (``p.grad`` after ``pre_step``: the sum / the batch) for
    "mean"; with a bound (the median norm) that clips some samples and not others."""
    norms, _ = _manual_clip(manual, x, y, 1e300, loss_reduction)  # no clipping: the norms
    max_norm = norms.median().item() * 1.001  # N even: torch's median is the lower middle one
    assert (norms > max_norm).any() and (norms < max_norm).any(), (norms, max_norm)

    module, optimizer, criterion = bench._opacus_private(twin, "hooks", (x, y), noise=0.0, max_grad_norm=max_norm)
    optimizer.zero_grad(set_to_none=True)
    criterion(module(x), y).backward()
    opacus_norms = torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in optimizer.grad_samples]).norm(dim=0)
    optimizer.pre_step()  # clip, noise σ = 0, scale by the expected batch (= the batch)
    opacus = dict(module._module.named_parameters())

    clip_norms, grads = _manual_clip(manual, x, y, max_norm, loss_reduction)
    assert_close(clip_norms, norms, rtol=0, atol=0)  # the same pass, another bound
    assert_close(clip_norms, opacus_norms, rtol=1e-10, atol=1e-12)
    assert grads.keys() == opacus.keys()
    for k, grad in grads.items():
        expected = opacus[k].summed_grad if loss_reduction == "sum" else opacus[k].grad
        assert_close(grad, expected, rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    return clip_norms, max_norm


@pytest.mark.parametrize("loss_reduction", ["sum", "mean"])
@pytest.mark.parametrize("order", ["helper_after_convert", "opacus_fix_then_convert"])
def test_small_groupnorm_convnet_clips_as_opacus(bench, order, loss_reduction):
    torch.manual_seed(0)
    bn_model = _small_convnet().double()
    x, y = _data(4, (3, 12, 12))
    if order == "helper_after_convert":
        manual = manualbp.convert(copy.deepcopy(bn_model), strict=True)
        with pytest.raises(PerSampleError, match="BatchNorm2d"):  # batch statistics: what the swap is for
            _manual_clip(manual, x, y, 1.0, loss_reduction)
        manual = batch_norm_to_group_norm(manual, groups=4)
        twin = batch_norm_to_group_norm(bn_model, groups=4)
    else:
        twin = ModuleValidator.fix(bn_model, num_groups=4).double()  # its GroupNorms are float32
        manual = manualbp.convert(copy.deepcopy(twin), strict=True)
    norms = [m for m in _leaves(manual) if isinstance(m, torch.nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(4, 8), (4, 16)]
    assert all(isinstance(m, ManualModule) for m in _leaves(manual))
    assert all(m.weight.dtype == torch.float64 for m in norms)
    _assert_clipped_like_opacus(bench, twin, manual, x, y, loss_reduction)


def test_resnet18_groupnorm_clips_as_opacus_in_float64(bench):
    """resnet18 (10 classes, GroupNorm(32, C)), 4 samples of 3x32x32, float64: ``bench_per_sample``'s
    ``resnet18_gn``, its residual sums and ReLUs out of place for Opacus's hooks."""
    torch.manual_seed(0)
    twin = bench.resnet18_gn().double()
    manual = manualbp.convert(copy.deepcopy(twin), strict=True)
    assert {(m.num_groups, m.num_channels) for m in manual.modules() if isinstance(m, torch.nn.GroupNorm)} == {
        (32, 64),
        (32, 128),
        (32, 256),
        (32, 512),
    }
    x, y = _data(4, (3, 32, 32))
    _assert_clipped_like_opacus(bench, twin, manual, x, y, "sum")


def test_the_helper_builds_what_opacus_fix_builds_and_keeps_converted_models_manual():
    torch.manual_seed(0)
    fixed = ModuleValidator.fix(torchvision.models.resnet18(num_classes=10))
    torch.manual_seed(0)
    converted = manualbp.convert(torchvision.models.resnet18(num_classes=10), strict=True)
    ours = batch_norm_to_group_norm(converted)
    assert ours is converted
    theirs = dict(fixed.named_modules())
    swapped = 0
    for name, module in ours.named_modules():
        if isinstance(theirs[name], torch.nn.GroupNorm):
            assert type(module) is manualbp.nn.GroupNorm, name
            keys = ("num_groups", "num_channels", "eps", "affine")
            assert [getattr(module, k) for k in keys] == [getattr(theirs[name], k) for k in keys], name
            swapped += 1
    assert swapped == 20  # resnet18's BatchNorms: 2 a block, 8 blocks, 3 downsamples, the stem
    assert all(isinstance(m, ManualModule) for m in _leaves(ours))
    assert_close(ours.state_dict(), fixed.state_dict(), rtol=0, atol=0)

    # a torch BatchNorm becomes torch's GroupNorm (convert makes it manual later); one shared stays shared;
    # device, dtype, train/eval mode kept; a BatchNorm alone comes back replaced
    shared = torch.nn.BatchNorm1d(6, affine=False, dtype=torch.float64).eval()
    model = batch_norm_to_group_norm(torch.nn.Sequential(shared, torch.nn.Tanh(), shared), groups=4)
    assert type(model[0]) is torch.nn.GroupNorm and model[0] is model[2]
    assert (model[0].num_groups, model[0].affine, model[0].training) == (2, False, False)
    alone = batch_norm_to_group_norm(manualbp.nn.BatchNorm2d(12, dtype=torch.float64))
    assert type(alone) is manualbp.nn.GroupNorm and alone.weight.dtype == torch.float64 and alone.num_groups == 4
    with pytest.raises(ValueError, match="groups"):
        batch_norm_to_group_norm(model, groups=0)
