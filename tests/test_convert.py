"""manualbp.convert swaps torch.nn layers for manual twins in place, sharing Parameters and buffers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import manualbp
import manualbp.nn as mnn
from manualbp.convert import layer_summary
from manualbp.nn import ManualModule
from manualbp.verify import seeded


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.act = nn.GELU(approximate="tanh")
        self.heads = nn.ModuleList([nn.Linear(6, 3), nn.Sequential(nn.Linear(6, 3), nn.Sigmoid())])

    def forward(self, x):
        h = self.act(self.proj(x))
        return torch.cat([self.heads[0](h), self.heads[1](h)], dim=-1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Tanh(), nn.Dropout(0.0), Block(), nn.LogSoftmax(dim=1))


def _torch_layers(model):
    return [name for name, m in model.named_modules() if not isinstance(m, ManualModule) and not list(m.children())]


def test_converts_nested_layers_in_place_sharing_parameters():
    model = _model()
    reference = copy.deepcopy(model)
    params_before = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer has a twin: no warning
        converted = manualbp.convert(model)
    assert converted is model
    assert _torch_layers(model) == []
    assert isinstance(model[4].heads[1][0], mnn.Linear) and isinstance(model[4].act, mnn.GELU)
    assert model[4].act.approximate == "tanh"
    for name, p in model.named_parameters():
        assert p is params_before[name]

    x, target = torch.randn(5, 2, 4), torch.tensor([0, 1, 2, 3, 4])
    loss = mnn.NLLLoss()(model(x), target)
    ref_loss = nn.NLLLoss()(reference(x), target)
    assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert_close(p.grad, q.grad, msg=name)
    optimizer.step()  # the optimizer built before convert updates the shared Parameters
    assert not torch.equal(model[1].weight, reference[1].weight)


def test_layers_without_twin_are_named_in_one_warning_one_line_per_type():
    class MyLinear(nn.Linear):  # a user's subclass may override forward: left alone
        pass

    model = nn.Sequential(
        nn.Linear(4, 4),
        nn.Hardtanh(),
        nn.Sequential(MyLinear(4, 4), nn.ReLU(inplace=True)),
        *(nn.Hardshrink() for _ in range(3)),
        nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
    )
    with pytest.warns(UserWarning) as record:
        manualbp.convert(model)
    assert len(record) == 1
    lines = str(record[0].message).splitlines()
    assert lines[0] == "manualbp.convert: 6 layer(s) stay torch.nn (their backward is autograd's):"
    assert sorted(lines[1:]) == [
        "  Conv2d x1 (manualbp.nn.Conv2d: padding_mode='reflect' is not supported; only 'zeros' is)",
        "  Hardshrink x3 (no manualbp twin)",
        "  Hardtanh x1 (no manualbp twin)",
        "  MyLinear x1 (no manualbp twin)",
    ]
    assert isinstance(model[0], mnn.Linear) and type(model[2][0]) is MyLinear and type(model[2][1]) is mnn.ReLU


def test_strict_raises_naming_the_layers_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.EmbeddingBag(10, 4))
    with pytest.raises(NotImplementedError, match=r"EmbeddingBag x1 \(no manualbp twin\)"):
        manualbp.convert(model, strict=True)
    assert type(model[0]) is nn.Linear


def test_shared_layer_is_converted_once_and_stays_shared():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    manualbp.convert(model)
    assert model[0] is model[2] and isinstance(model[0], mnn.Linear)
    assert model[0].weight is shared.weight


def test_buffers_hooks_and_mode_are_carried_over():
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    layer = nn.Linear(3, 3)
    calls = []
    layer.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    model = nn.ModuleDict({"layer": layer, "loss": loss}).eval()
    manualbp.convert(model)
    assert model["loss"].weight is loss.weight and isinstance(model["loss"], mnn.CrossEntropyLoss)
    assert not model["layer"].training
    model["layer"](torch.randn(2, 3))
    assert calls == ["Linear"]


def test_a_layer_itself_returns_its_twin_and_manual_layers_are_left_alone():
    layer = nn.Linear(2, 2)
    twin = manualbp.convert(layer)
    assert isinstance(twin, mnn.Linear) and twin.weight is layer.weight
    already = nn.Sequential(mnn.ReLU())
    inner = already[0]
    manualbp.convert(already)
    assert already[0] is inner


def test_identity_and_containers_need_no_twin():
    model = nn.Sequential(nn.Identity(), nn.ModuleList([nn.Sigmoid()]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manualbp.convert(model)
    assert isinstance(model[1][0], mnn.Sigmoid)


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        _Stem(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding="same", groups=2), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2)),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 12),
        nn.LayerNorm(12),
        nn.ReLU(),
        nn.Linear(12, 5),
    ).double()


def _graph_node_types(root) -> set[str]:
    seen, stack, types = set(), [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        native = not isinstance(node, torch.autograd.function.BackwardCFunction)
        types.add(type(node).__name__ if native else "custom Function")
        stack.extend(next_node for next_node, _ in node.next_functions)
    return types


def test_a_nested_cnn_converts_fully_and_trains_exactly_like_torch():
    model, reference = _cnn(), _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manualbp.convert(model)
    assert _torch_layers(model) == []
    for step in range(2):  # two training steps: outputs, gradients and running statistics stay equal
        x, target = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 4])
        loss = mnn.CrossEntropyLoss()(model(x), target)
        ref_loss = nn.CrossEntropyLoss()(reference(x), target)
        assert_close(loss, ref_loss)
        model.zero_grad()
        reference.zero_grad()
        loss.backward()
        ref_loss.backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert_close(p.grad, q.grad, msg=f"step {step}: {name}")
        assert_close(model.state_dict(), reference.state_dict())

    # Between the manual loss and the parameters: custom Function nodes and AccumulateGrad only.
    assert _graph_node_types(loss.grad_fn) == {"custom Function", "AccumulateGrad"}
    native_in_torch_graph = _graph_node_types(ref_loss.grad_fn) - {"AccumulateGrad"}
    assert native_in_torch_graph and "custom Function" not in native_in_torch_graph  # the walk sees native nodes
    model.eval()
    reference.eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert_close(model(x), reference(x))


# manualbp.to_torch: the autograd twin of a manual model, as a deep copy.


def _all_torch(model) -> bool:
    return not any(isinstance(m, ManualModule) for m in model.modules())


@pytest.mark.parametrize("make", [_model, _cnn], ids=["nested-mlp", "cnn-batchnorm"])
def test_to_torch_round_trip_gives_torch_layers_equal_outputs_and_gradients(make):
    original = make()
    manual = manualbp.convert(copy.deepcopy(original))
    snapshot = copy.deepcopy(manual.state_dict())
    twin = manualbp.to_torch(manual)

    assert _all_torch(twin)
    assert [type(m) for m in twin.modules()] == [type(m) for m in original.modules()]
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in manual.named_parameters()]
    assert [n for n, _ in twin.named_buffers()] == [n for n, _ in manual.named_buffers()]
    for (name, p), q in zip(manual.named_parameters(), twin.parameters()):
        assert p is not q and p.data_ptr() != q.data_ptr() and torch.equal(p, q), name
    assert str(twin) == str(original)  # same configuration (extra_repr) everywhere

    x = torch.randn(5, 2, 4) if make is _model else torch.randn(3, 2, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4])[: x.shape[0]]
    loss_fn = nn.NLLLoss() if make is _model else nn.CrossEntropyLoss()
    loss = loss_fn(manual(x), target)
    ref_loss = loss_fn(twin(x), target)
    assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(manual.named_parameters(), twin.parameters()):
        assert_close(p.grad, q.grad, msg=name)
    assert_close(manual.state_dict(), twin.state_dict())  # running statistics moved alike

    # The manual model is untouched: still manual, its layers and values its own.
    assert not any(isinstance(m, ManualModule) for m in original.modules())
    assert _torch_layers(manual) == []
    with torch.no_grad():
        for q in twin.parameters():
            q.add_(1.0)
    twin.eval()
    assert manual.training and all(m.training for m in manual.modules())
    for name, value in manual.state_dict().items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, snapshot[name]), name


def test_to_torch_keeps_mode_buffers_sharing_and_torch_layers():
    shared = mnn.Linear(3, 3)
    weight = torch.tensor([1.0, 2.0, 3.0])
    custom = nn.Hardtanh()  # no manual twin: copied as it is
    model = nn.Sequential(shared, mnn.ReLU(), shared, custom, mnn.CrossEntropyLoss(weight=weight)).eval()
    twin = manualbp.to_torch(model)
    assert type(twin[0]) is nn.Linear and twin[0] is twin[2] and type(twin[1]) is nn.ReLU
    assert type(twin[3]) is nn.Hardtanh and twin[3] is not custom
    assert type(twin[4]) is nn.CrossEntropyLoss and torch.equal(twin[4].weight, weight)
    assert twin[4].weight is not model[4].weight
    assert not any(m.training for m in twin.modules())
    assert type(model[0]) is mnn.Linear and type(model[4]) is mnn.CrossEntropyLoss


def test_to_torch_of_a_single_layer_and_of_a_torch_model():
    layer = mnn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
    twin = manualbp.to_torch(layer)
    assert type(twin) is nn.Conv2d and twin.stride == (2, 2) and twin.bias is None
    assert torch.equal(twin.weight, layer.weight) and twin.weight is not layer.weight
    plain = nn.Sequential(nn.Linear(2, 2))
    copied = manualbp.to_torch(plain)
    assert copied is not plain and type(copied[0]) is nn.Linear and torch.equal(copied[0].weight, plain[0].weight)


# Fusion: recognised pairs of consecutive Sequential children become one fused manual layer.


def _fusible() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    ).double()


def test_fuses_linear_relu_and_relu_max_pool_keeping_names_values_and_gradients():
    model, reference = _fusible(), _fusible()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ReLU(inplace=True) is fused, so nothing is left as torch
        manualbp.convert(model, fuse=True)
    assert [type(m) for m in model] == [
        mnn.Conv2d,
        nn.Identity,
        mnn.ReLUMaxPool2d,
        mnn.Flatten,
        mnn.LinearReLU,
        nn.Identity,
        mnn.Linear,
    ]
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model[4].weight is not None and model[4].weight is model[4].to_torch().weight
    x, target = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    loss = mnn.CrossEntropyLoss()(model(x), target)
    ref_loss = nn.CrossEntropyLoss()(reference(x), target)
    assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, msg=name)
    assert _graph_node_types(loss.grad_fn) == {"custom Function", "AccumulateGrad"}

    twin = manualbp.to_torch(model)  # and back: autograd counterparts, same names and numbers
    assert _all_torch(twin) and not any(isinstance(m, (mnn.LinearReLU, mnn.ReLUMaxPool2d)) for m in twin.modules())
    assert list(twin.state_dict()) == list(reference.state_dict())
    assert_close(twin(x), reference(x))


def test_without_fuse_every_layer_stays_apart_and_no_layer_pretends_to_be_a_linear():
    model = _fusible()
    manualbp.convert(model)
    assert [type(m) for m in model][1:6] == [mnn.ReLU, mnn.MaxPool2d, mnn.Flatten, mnn.Linear, mnn.ReLU]
    assert model[1].inplace
    assert not isinstance(mnn.LinearReLU(3, 2), nn.Linear) and not isinstance(
        mnn.LinearReLU(3, 2).to_torch(), nn.Linear
    )


def test_pairs_with_hooks_shared_layers_or_unsupported_pools_are_not_fused():
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: None)
    shared_relu = nn.ReLU()
    model = nn.Sequential(
        hooked,
        nn.ReLU(),  # hook on the Linear: it must still see its own output
        nn.Linear(4, 4),
        shared_relu,
        nn.Linear(4, 4),
        shared_relu,  # the ReLU object appears twice
        nn.Unflatten(1, (1, 2, 2)),  # moves data only: stays torch's, unreported
        nn.ReLU(),
        nn.MaxPool2d(2, dilation=2, padding=1),  # dilation: no fused pool
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manualbp.convert(model, fuse=True)
    assert [type(m) for m in model] == [
        mnn.Linear,
        mnn.ReLU,
        mnn.Linear,
        mnn.ReLU,
        mnn.Linear,
        mnn.ReLU,
        nn.Unflatten,
        mnn.ReLU,
        mnn.MaxPool2d,
    ]
    assert model[3] is model[5]


def test_only_sequential_children_are_fused_since_only_there_the_order_is_known():
    block = Block()  # forward calls act(proj(x)) but a plain Module says nothing about order
    block.act = nn.ReLU()
    manualbp.convert(block, fuse=True)
    assert type(block.proj) is mnn.Linear and type(block.act) is mnn.ReLU


def test_a_users_subclass_of_a_manual_layer_is_no_twin():
    class ScaledLinear(manualbp.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    manualbp.convert(model, fuse=False)
    assert type(model[0]) is manualbp.nn.Linear
    assert ScaledLinear(3, 2)(torch.ones(1, 3)).shape == (1, 2)  # and it still works as a layer


def test_a_parametrized_manual_layer_is_no_twin():
    layer = torch.nn.utils.parametrizations.weight_norm(manualbp.nn.Linear(3, 2))
    assert type(layer).__name__ == "ParametrizedLinear"
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    manualbp.convert(model, fuse=False)
    assert type(model[0]) is manualbp.nn.Linear
    torch.testing.assert_close(
        layer(torch.ones(1, 3)), torch.nn.functional.linear(torch.ones(1, 3), layer.weight, layer.bias)
    )


# torchvision's classification models built only of layers with a twin (plus adds and flattens in forward)


@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnet34", "mobilenet_v2", pytest.param("vgg11_bn", marks=pytest.mark.slow)],
)
def test_torchvision_model_converts_fully_and_keeps_outputs_and_gradients(name):
    """Every layer with parameters or an activation becomes manual (the nine ReLU(inplace=True) of resnet18
    included); output and every parameter's gradient equal the unconverted copy's in float64. 64x64 inputs:
    at 32x32 the last BatchNorm of resnet34 normalises 2 values per channel, where gradients are ill-conditioned."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).double()
    reference = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays torch.nn
        manualbp.convert(model)
    assert not layer_summary(model)["torch"]
    x, target = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([1, 7])
    outputs = []
    for m in (model, reference):
        out = seeded(m)(x)  # the same dropout masks on both sides
        nn.functional.cross_entropy(out, target).backward()
        outputs.append(out)
    assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for (label, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=label)


def test_a_convnext_converts_fully_with_manual_blocks_and_keeps_outputs_and_gradients():
    """torchvision's ConvNeXt (two stages of one block each, widths 4 and 8, stochastic depth 0.5, training mode):
    every CNBlock becomes manualbp's (its layer scale a hand-written op, its layers manual); output and every
    parameter's gradient equal the unconverted copy's in float64, with the same stochastic-depth masks."""
    convnext = pytest.importorskip("torchvision.models.convnext")
    torch.manual_seed(0)
    stages = [convnext.CNBlockConfig(4, 8, 1), convnext.CNBlockConfig(8, None, 1)]
    model = convnext.ConvNeXt(stages, stochastic_depth_prob=0.5, num_classes=3).double()
    reference = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays torch.nn
        manualbp.convert(model)
    assert not layer_summary(model)["torch"]
    assert sum(isinstance(m, ManualModule) and isinstance(m, convnext.CNBlock) for m in model.modules()) == 2
    x, target = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 0, 2, 1])
    outputs = []
    for m in (model, reference):
        out = seeded(m)(x)  # the same stochastic-depth masks on both sides
        nn.functional.cross_entropy(out, target).backward()
        outputs.append(out)
    assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for (label, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=label)
