"""Every registry case's layer against its torch.nn twin: state dict, initialisation, repr, arguments."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn
from tests.conftest import CASES


@pytest.mark.parametrize("case", CASES)
def test_state_dict_moves_both_ways(case, device):
    manual, reference = case.manual().to(device), case.reference().to(device)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))
    manual.load_state_dict(reference.state_dict())
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)
    fresh = case.reference().to(device)
    fresh.load_state_dict(manual.state_dict())
    assert_close(fresh.state_dict(), manual.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_same_initialisation_names_and_repr_as_torch(case):
    torch.manual_seed(3)
    manual = case.manual()
    torch.manual_seed(3)
    reference = case.reference()
    assert list(manual.state_dict()) == list(reference.state_dict())
    assert [n for n, _ in manual.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)
    if not case.is_twin:
        return  # a fused layer against a composition of torch layers: no class, repr or arguments to mirror
    assert manual.extra_repr() == reference.extra_repr()
    assert isinstance(manual, type(reference))
    # a layer made of layers (attention, a transformer layer) prints its manual children as manualbp ones too
    assert repr(manual).startswith("manualbp.") and repr(manual).replace("manualbp.", "") == repr(reference)


def test_softmax_dtype_argument_is_rejected_by_name():
    with pytest.raises(NotImplementedError, match="softmax: the dtype argument"):
        MF.softmax(torch.randn(2, 3), dim=1, dtype=torch.float64)


def test_legacy_reduction_arguments_behave_as_in_torch(device):
    x, t = torch.randn(4, 3, device=device, requires_grad=True), torch.tensor([0, 2, 1, 0], device=device)
    with pytest.warns(UserWarning):
        manual = mnn.CrossEntropyLoss(size_average=False)
    with pytest.warns(UserWarning):
        reference = torch.nn.CrossEntropyLoss(size_average=False)
    assert manual.reduction == reference.reduction == "sum"
    assert_close(manual(x, t), reference(x, t))


def test_dropout_eval_is_identity_and_train_draws_torchs_mask(device):
    x = torch.randn(64, 32, device=device)
    layer = mnn.Dropout(0.4)
    torch.manual_seed(7)
    manual = layer(x)
    torch.manual_seed(7)
    reference = torch.nn.functional.dropout(x, 0.4, training=True)
    assert_close(manual, reference, rtol=0, atol=0)
    assert 0.3 < (manual == 0).float().mean() < 0.5
    assert layer.eval()(x) is x
