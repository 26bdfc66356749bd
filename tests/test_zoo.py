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
from manualbp.verify.exact_references import exact_hardsigmoid

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


def small_maxvit() -> torch.nn.Module:
    """A MaxViT of torchvision's blocks (MBConv, block and grid attention with their relative position bias) sized
    for 32x32 inputs: maxvit_t itself takes 224x224, whose float64 gradients take minutes on two cores."""
    from torchvision.models.maxvit import MaxVit

    options = dict(stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1], head_dim=8)
    return MaxVit(input_size=(32, 32), stochastic_depth_prob=0.2, num_classes=10, **options)


#: small models of each family of blocks that own a parameter or draw a random mask (StochasticDepth), how to build
#: each and the input size it takes
SMALL = {
    "convnext_tiny": (lambda: build("convnext_tiny", device="cpu"), 32),
    "swin_t": (lambda: build("swin_t", device="cpu"), 32),
    "swin_v2_t": (lambda: build("swin_v2_t", device="cpu"), 32),
    "maxvit": (small_maxvit, 32),
    "mobilenet_v3_small": (lambda: build("mobilenet_v3_small", device="cpu"), 32),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_a_converted_model_gives_the_originals_outputs_and_gradients(name):
    """float64, train mode (StochasticDepth and dropout draw the same masks from the same seed), one batch of 2.
    Relative 1e-8 per entry, and absolutely 1e-12 of the model's largest gradient: batch norm over the two values
    of a 1x1 map makes gradients of 1e7 beside ones that are 0 but for rounding. The original's Hardsigmoid
    (mobilenet_v3) is differentiated with an exact slope (``exact_hardsigmoid``)."""
    make, size = SMALL[name]
    torch.manual_seed(0)
    reference = make().double()
    model = manualbp.convert(copy.deepcopy(reference), strict=True)
    exact_hardsigmoid(reference)
    x, target = torch.randn(2, 3, size, size, dtype=torch.float64), torch.tensor([1, 7])
    outputs = []
    for m in (model, reference):
        out = seeded(m)(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        outputs.append(out)
    assert_close(outputs[0], outputs[1], rtol=1e-8, atol=1e-10)
    largest = max(q.grad.abs().max().item() for q in reference.parameters())
    for (label, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-12 * largest, msg=label)
