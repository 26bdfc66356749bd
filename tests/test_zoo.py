"""torchvision's whole classification zoo converts fully: every model of at most 100M parameters, walked from
``torchvision.models.list_models``, keeps no torch.nn layer that computes (``manualbp.convert(strict=True)``
raises on one). Built on the meta device (no memory, no init), so the walk takes seconds; outputs and gradients
against the originals are ``experiments/zoo.py``'s (float64, every model) and the slow tests below (small ones)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

import manualbp
from manualbp.convert import layer_summary
from manualbp.verify import seeded

torchvision = pytest.importorskip("torchvision")

#: torchvision's own count of each model's parameters (1000 classes); with 10 classes none crosses 100M
ZOO = [
    name
    for name in torchvision.models.list_models(module=torchvision.models)
    if next(iter(torchvision.models.get_model_weights(name))).meta["num_params"] <= 100_000_000
]


def build(name: str, device: str = "meta") -> torch.nn.Module:
    """torchvision's ``name`` with 10 classes (a ViT at twice its patch size); regnets compute their widths with
    tensors, which the meta device cannot read back, so they are built on the CPU."""
    options: dict = {"num_classes": 10}
    if name.startswith("vit_"):
        options["image_size"] = 2 * int(name.rsplit("_", 1)[1])
    if name.startswith(("googlenet", "inception")):
        options["init_weights"] = True  # torchvision warns when it has to choose
    with torch.device("cpu" if name.startswith("regnet") else device):
        return torchvision.models.get_model(name, **options)


def test_the_zoo_is_torchvisions_classification_list():
    assert len(ZOO) >= 60 and {"resnet18", "convnext_tiny", "swin_v2_t", "maxvit_t", "vit_b_16"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_every_classification_model_converts_with_nothing_left_that_computes(name):
    model = manualbp.convert(build(name), strict=True)
    assert layer_summary(model)["torch"] == {}
    assert sum(p.numel() for p in model.parameters()) <= 100_000_000


#: small models of each family of blocks that own a parameter or draw a random mask, with the input size they take
SMALL = {"convnext_tiny": 32, "swin_v2_t": 32, "swin_t": 32, "maxvit_t": 224, "efficientnet_b0": 32}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_a_converted_model_gives_the_originals_outputs_and_gradients(name):
    """float64, train mode (StochasticDepth and dropout draw the same masks from the same seed), one batch of 2."""
    torch.manual_seed(0)
    reference = build(name, device="cpu").double()
    model = manualbp.convert(copy.deepcopy(reference), strict=True)
    size = SMALL[name]
    x, target = torch.randn(2, 3, size, size, dtype=torch.float64), torch.tensor([1, 7])
    outputs = []
    for m in (model, reference):
        out = seeded(m)(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        outputs.append(out)
    assert_close(outputs[0], outputs[1], rtol=1e-8, atol=1e-10)
    for (label, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=label)
