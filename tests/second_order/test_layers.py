"""``manualbp.curvature`` on every layer configuration of the per-sample registry (``tests.per_sample.cases``):
the layer followed by a linear head, in float64, against brute force (``references``: Jᵀ H J from torch.func
over the torch twin) with cross entropy, and the first-order quantities against each sample's own gradient with
a summed MSE (``test_models`` checks every loss and reduction against BackPACK)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp
import manualbp.nn as mnn
from manualbp.second_order import CurvatureError
from tests.per_sample.cases import LAYER_PARAMS, batch_input
from tests.second_order.references import ggn_reference, sample_grads

TOL = dict(rtol=1e-7, atol=1e-11)
CLASSES = 3
SECOND = ("diag_ggn_exact", "diag_ggn_exact_batch")


#: layers whose weight has no Kronecker factors here: kflr raises for them
def no_kronecker(case_id: str) -> bool:
    return case_id.startswith(("conv_transpose", "cn_block")) or (
        case_id.startswith("conv") and ("groups" in case_id or "depthwise" in case_id)
    )


FIRST = ("grad_batch", "batch_l2", "sum_grad_squared", "variance")

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def with_head(case):
    """(manual, reference) models: the case's layer, flattened, then a linear head to ``CLASSES`` outputs; the
    heads share their initial values."""
    manual, reference = case.build()
    x = batch_input(case)
    with torch.no_grad():
        features = manual(x)[0].numel()
    torch_head = torch.nn.Linear(features, CLASSES, dtype=torch.float64)
    manual_head = mnn.Linear(features, CLASSES, dtype=torch.float64)
    manual_head.load_state_dict(torch_head.state_dict())
    manual_model = torch.nn.Sequential(manual, torch.nn.Flatten(), manual_head)
    reference_model = torch.nn.Sequential(reference, torch.nn.Flatten(), torch_head)
    return manual_model, reference_model, x


def targets(kind: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if kind == "cross_entropy":
        return torch.randint(0, CLASSES, (batch,), generator=g)
    return torch.randn(batch, CLASSES, generator=g, dtype=torch.float64)


def manual_loss(kind: str, reduction: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return getattr(manualbp.functional, kind)(output, target, reduction=reduction)


def computed(case, kind: str, reduction: str, *names: str):
    """(manual, reference, x, target) after a backward of the case's network inside ``curvature(manual, *names)``."""
    manual, reference, x = with_head(case)
    target = targets(kind, x.shape[0])
    with manualbp.curvature(manual, *names):
        manual_loss(kind, reduction, manual(x), target).backward()
    return manual, reference, x, target


@pytest.mark.parametrize("case", LAYER_PARAMS)
def test_diagonal_ggn_equals_brute_force(case):
    """Cross entropy with a mean: the losses and reductions differ only in the factor S, which
    ``test_models`` checks on every combination against BackPACK."""
    manual, reference, x, target = computed(case, "cross_entropy", "mean", *SECOND)
    expected = ggn_reference(reference, x, target, "cross_entropy", "mean")
    for (_, p), ref_name in zip(manual.named_parameters(), expected):
        assert_close(p.diag_ggn_exact, expected[ref_name]["diag"], **TOL)
        assert_close(p.diag_ggn_exact_batch, expected[ref_name]["batch"], **TOL)


@pytest.mark.parametrize("case", LAYER_PARAMS)
def test_kflr_blocks_equal_brute_force_or_raise(case):
    """A parameter without Kronecker factors gets its GGN block [Σ_n J_nᵀ H_n J_n] (a bias: B); the head's
    weight [B, A] with B its bias's block and A its input's second moment; grouped and transposed convolutions
    raise."""
    if no_kronecker(case.id):
        with pytest.raises(CurvatureError, match="Kronecker factors of a grouped or transposed convolution"):
            computed(case, "cross_entropy", "mean", "kflr")
        return
    try:
        manual, reference, x, target = computed(case, "cross_entropy", "mean", "kflr")
    except CurvatureError as error:  # an embedding table or a token: too large a block
        assert "GGN block" in str(error)
        return
    expected = ggn_reference(reference, x, target, "cross_entropy", "mean")
    for (_, p), ref_name in zip(manual.named_parameters(), expected):
        if len(p.kflr) == 1:
            assert_close(p.kflr[0], expected[ref_name]["block"], **TOL)
    # the head's weight, [B, A]: B its bias's block, A = (1/N) Σ_n h_n h_nᵀ of its input h
    with torch.no_grad():
        h = manual[1](manual[0](x))
    output_side, input_side = manual[2].weight.kflr
    assert_close(output_side, manual[2].bias.kflr[0], **TOL)
    assert_close(input_side, h.t() @ h / x.shape[0], **TOL)


@pytest.mark.parametrize("case", LAYER_PARAMS)
def test_first_order_from_each_samples_gradient(case):
    manual, reference, x, target = computed(case, "mse_loss", "sum", *FIRST)
    grads = sample_grads(reference, x, target, "mse_loss", "sum")
    for (_, p), g in zip(manual.named_parameters(), grads.values()):
        n = x.shape[0]
        assert_close(p.grad_batch, g, **TOL)
        assert_close(p.batch_l2, g.flatten(1).square().sum(1), **TOL)
        assert_close(p.sum_grad_squared, g.square().sum(0), **TOL)
        assert_close(p.variance, g.square().sum(0) / n - (g.sum(0) / n).square(), **TOL)
        assert_close(p.grad, g.sum(0), **TOL)
