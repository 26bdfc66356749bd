"""inplace=True layers: the result is written into the input, the backward uses what survives the overwrite,
and autograd's version counter guards every tensor a backward saved, exactly as with torch's in-place layers."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.verify import seeded
from manualbp.verify.builtin_cases import BUILTIN_CASES

IN_PLACE_CASES = [pytest.param(case, id=case.id) for case in BUILTIN_CASES if case.id.endswith("-inplace")]
LAYERS = [("ReLU", ()), ("ReLU6", ()), ("LeakyReLU", (0.1,)), ("ELU", (0.5,)), ("SiLU", ()), ("Dropout", (0.3,))]
LAYERS += [("Hardswish", ()), ("Hardsigmoid", ()), ("Mish", ()), ("SELU", ()), ("CELU", (0.5,)), ("Dropout2d", (0.4,))]
#: In-place layers whose backward keeps a copy of their input (as torch's in-place SiLU does) or a mask, not their
#: output: overwriting the output again changes nothing they read
KEEPS_INPUT = ("silu", "dropout", "hardswish", "hardsigmoid", "mish")
MODIFIED = "one of the variables needed for gradient computation has been modified by an inplace operation"


def test_every_inplace_layer_has_a_registry_case():
    layers = {type(case.values[0].manual()[1]).__name__ for case in IN_PLACE_CASES}
    assert layers == {name for name, _ in LAYERS}


@pytest.mark.parametrize("layer, args", LAYERS, ids=[name for name, _ in LAYERS])
def test_inplace_layer_overwrites_and_returns_its_input_as_torch_does(layer, args):
    manual, reference = getattr(mnn, layer)(*args, inplace=True), getattr(torch.nn, layer)(*args, inplace=True)
    assert repr(manual) == "manualbp." + repr(reference)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) * 4
    outputs = []
    for module in (manual, reference):
        h = x.clone()
        version = h._version
        y = seeded(module)(h)
        assert y is h and h._version > version
        outputs.append(y)
    assert isinstance(outputs[0].grad_fn, torch.autograd.function.BackwardCFunction)
    assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def _saves_its_input(h: torch.Tensor, manual: bool) -> torch.Tensor:
    """A layer that saves its input for backward (SiLU), manual or torch's."""
    return MF.silu(h) if manual else torch.nn.functional.silu(h)


def _backward(case, manual: bool, use_after: bool) -> torch.Tensor | str:
    """Run: h = copy of x; s = silu(h) (saves h); the in-place layer on h; then, with ``use_after``, its output
    modified in place once more; backward. The error autograd raises, or else dL/dx."""
    layer = case.build()[0 if manual else 1][1]
    (x,) = case.sample()
    h = x.clone()
    saved = None if use_after else _saves_its_input(h, manual)
    y = seeded(layer)(h)
    if use_after:
        y.mul_(2)
    loss = y.sum() if saved is None else y.sum() + saved.sum()
    try:
        return torch.autograd.grad(loss, x)[0]
    except RuntimeError as error:
        return str(error)


@pytest.mark.parametrize("case", IN_PLACE_CASES)
def test_inplace_layer_after_a_layer_that_saved_its_input_raises_autograds_error(case):
    """The version counter check: the overwrite invalidates what the layer before saved, for both."""
    for manual in (True, False):
        error = _backward(case, manual, use_after=False)
        assert isinstance(error, str) and MODIFIED in error, (manual, error)


@pytest.mark.parametrize("case", IN_PLACE_CASES)
def test_overwriting_the_output_again_raises_or_gives_torchs_gradient(case):
    """ReLU, ReLU6, LeakyReLU, ELU, SELU and CELU save their output, so a later in-place op on it is autograd's error (torch
    raises too, except for ReLU6, whose in-place backward keeps a copy of the input instead); SiLU (a copy of the
    input) and Dropout (the mask) do not, and give torch's gradient; so do the long tail's (a copy of the input)."""
    manual, reference = (_backward(case, m, use_after=True) for m in (True, False))
    saves_output = not case.id.startswith(KEEPS_INPUT)
    if saves_output:
        assert isinstance(manual, str) and MODIFIED in manual
        assert isinstance(reference, str) or case.id.startswith("relu6")
    else:
        assert_close(manual, reference)


@pytest.mark.parametrize("fn", [MF.relu, MF.relu6, MF.silu], ids=["relu", "relu6", "silu"])
def test_inplace_on_a_view_and_on_a_leaf_behave_as_in_torch(fn):
    reference = getattr(torch.nn.functional, fn.__name__)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for f in (fn, reference):
        h = x.clone()
        f(h[:, 1:3], inplace=True)  # a view: autograd rebases h's history onto the Function
        grads.append(torch.autograd.grad((h * h).sum(), x)[0])
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
            f(x, inplace=True)  # refused before anything is overwritten
        with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
            f(x[0], inplace=True)
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("fn, name", [(MF.leaky_relu, "negative_slope"), (MF.elu, "alpha")], ids=["leaky_relu", "elu"])
def test_negative_parameter_in_place_has_no_gradient_but_runs_without_one(fn, name):
    """Torch raises in backward; manualbp at the call, naming it. Without a gradient both compute."""
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=f"{fn.__name__}: inplace=True with a negative {name}"):
        fn(x.requires_grad_().clone(), -0.5, inplace=True)
    reference = getattr(torch.nn.functional, fn.__name__)
    with torch.no_grad():
        assert_close(fn(x.clone(), -0.5, inplace=True), reference(x.clone(), -0.5, inplace=True), rtol=0, atol=0)


def test_vmap_refuses_to_write_a_batched_result_into_an_unbatched_input():
    """An in-place Function on a tensor outside the vmap, with a batched mask: no room for the result. Torch's own
    in-place product refuses too."""
    z, masks = torch.randn(3, 4), torch.rand(5, 3, 4)
    with pytest.raises(RuntimeError, match="vmap: inplace arithmetic"):
        torch.func.vmap(lambda m: z.clone().mul_(m))(masks)
    with pytest.raises(RuntimeError, match="vmap: DropoutInplaceFunction cannot write into its input"):
        torch.func.vmap(lambda m: MF.DropoutInplaceFunction.apply(z.clone(), m))(masks)


@pytest.mark.parametrize("shape", [(1, 3, 3, 2), (4, 5, 2)], ids=["constant_table", "sequence"])
def test_inplace_relu_after_a_linear_of_three_or_more_dims_runs_as_in_torch(shape):
    """swin_v2's continuous position bias, Linear -> ReLU(inplace=True) -> Linear, on its (1, 2Wh-1, 2Ww-1, 2)
    buffer: torch's linear of 3+ dims with a bias returns a view of its addmm, and returned from LinearFunction's
    forward that view could not be written in place (refused as "a view of a leaf", then by autograd)."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=len(shape) == 3)
    layers = [(mnn.Linear(2, 8), mnn.ReLU(inplace=True), mnn.Linear(8, 3, bias=False))]
    layers.append((torch.nn.Linear(2, 8), torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 3, bias=False)))
    manual, reference = (torch.nn.Sequential(*parts).double() for parts in layers)
    reference.load_state_dict(manual.state_dict())
    grads = []
    for mlp in (manual, reference):
        inputs = [x, *mlp.parameters()] if x.requires_grad else list(mlp.parameters())
        grads.append(torch.autograd.grad(mlp(x).square().sum(), inputs))
    assert_close(grads[0], grads[1])
