"""The transformer layers beyond what the registry's battery compares: whole torchvision ViTs converted, torch's
inference fast paths never taken, activations, and the way back to torch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.models import VisionTransformer, vit_b_16

import manualbp
import manualbp.nn as mnn
from manualbp.convert import layer_summary
from manualbp.functional._validation import InputError


def test_torchvisions_vit_b_16_converts_fully_manual_class_token_and_position_embedding_included():
    torch.manual_seed(0)
    reference = vit_b_16(image_size=32).eval()
    manual = manualbp.convert(copy.deepcopy(reference), strict=True)
    assert isinstance(manual, mnn.VisionTransformer) and isinstance(manual.encoder, mnn.Encoder)
    assert layer_summary(manual)["torch"] == {}
    assert manual.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(manual(x), reference(x), atol=1e-4, rtol=1e-4)


def test_a_vits_class_token_and_position_embedding_get_their_gradient_from_hand_written_functions():
    torch.manual_seed(0)
    manual = manualbp.convert(VisionTransformer(8, 4, 1, 2, 4, 8, num_classes=3), strict=True)
    parents = {}
    output = manual(torch.randn(2, 3, 8, 8))
    for node in _nodes(output):
        for child, _ in node.next_functions:
            if type(child).__name__ == "AccumulateGrad":
                parents[id(child.variable)] = type(node).__name__
    assert parents[id(manual.class_token)] == "TokenFunctionBackward"
    assert parents[id(manual.encoder.pos_embedding)] == "AddParameterFunctionBackward"


@pytest.mark.parametrize("norm_first", [False, True])
def test_inference_never_takes_torchs_fast_path_and_matches_it(monkeypatch, norm_first):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=norm_first)
    reference = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    manual = manualbp.convert(copy.deepcopy(reference), strict=True).eval()
    x = torch.randn(3, 5, 8)
    padding = torch.tensor([[False] * 5, [False] * 4 + [True], [False] * 3 + [True] * 2])
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=padding)  # torch's fused inference kernel
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: pytest.fail("fast path taken"))
    monkeypatch.setattr(torch, "_native_multi_head_attention", lambda *a, **k: pytest.fail("fast path taken"))
    with torch.no_grad():
        actual = manual(x, src_key_padding_mask=padding)
    keep = ~padding.unsqueeze(-1).expand_as(x)  # torch's fast path leaves padded positions undefined
    assert_close(actual[keep], expected[keep], atol=1e-5, rtol=1e-4)


def test_an_activation_without_a_manual_twin_leaves_the_layer_to_torch_with_the_reason():
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, activation=F.silu)
    with pytest.warns(UserWarning, match="activation silu has no manualbp twin"):
        converted = manualbp.convert(torch.nn.Sequential(layer))
    assert type(converted[0]) is torch.nn.TransformerEncoderLayer
    with pytest.raises(NotImplementedError, match="activation silu has no manualbp twin"):
        mnn.TransformerEncoderLayer(8, 2, 16, activation=F.silu)


@pytest.mark.parametrize(
    "activation", ["relu", "gelu", F.gelu, torch.nn.GELU()], ids=["relu", "gelu", "F.gelu", "GELU()"]
)
def test_every_activation_torch_takes_by_name_or_function_is_manual(activation):
    torch.manual_seed(0)
    reference = torch.nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, activation=activation)
    layer = mnn.TransformerDecoderLayer.from_torch(reference)
    x, memory = torch.randn(3, 2, 8, requires_grad=True), torch.randn(4, 2, 8)
    assert_close(layer(x, memory), reference(x, memory))
    names = {type(n).__name__ for n in _nodes(layer(x, memory))}
    assert not names & {"GeluBackward0", "ReluBackward0"}, names


def test_a_copied_decoder_layer_keeps_an_activation_module():
    """torch's own copy of a TransformerDecoderLayer replaces an activation module by F.relu (its __setstate__)."""
    layer = mnn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, activation=torch.nn.GELU())
    for copied in (copy.deepcopy(layer), mnn.TransformerDecoder(layer, 2).layers[1]):
        assert isinstance(copied.activation, mnn.GELU)
    x, memory = torch.randn(3, 2, 8), torch.randn(4, 2, 8)
    assert_close(copy.deepcopy(layer)(x, memory), layer(x, memory))


def test_to_torch_gives_torch_layers_all_the_way_down():
    manual = mnn.TransformerEncoder(mnn.TransformerEncoderLayer(8, 2, 16), 2)
    back = manualbp.to_torch(manual)
    assert not any(isinstance(m, mnn.ManualModule) for m in back.modules())
    assert type(back.layers[0].self_attn.out_proj) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    assert back.state_dict().keys() == manual.state_dict().keys()


def _nodes(output: torch.Tensor) -> list:
    seen, stack = [], [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack.extend(n for n, _ in node.next_functions)
    return seen


def test_neither_from_torch_nor_to_torch_changes_the_module_it_starts_from():
    torch.manual_seed(0)
    reference = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)
    manual = mnn.TransformerEncoder.from_torch(reference)
    assert not any(isinstance(m, mnn.ManualModule) for m in reference.modules())
    back = manual.to_torch()
    assert all(isinstance(layer, mnn.TransformerEncoderLayer) for layer in manual.layers)
    assert not any(isinstance(m, mnn.ManualModule) for m in back.modules())
    assert back.layers[0].self_attn.in_proj_weight is reference.layers[0].self_attn.in_proj_weight  # shared state
    vit = VisionTransformer(8, 4, 1, 2, 4, 8)
    mnn.VisionTransformer.from_torch(vit)
    assert not any(isinstance(m, mnn.ManualModule) for m in vit.modules())


def test_attention_weights_refuse_a_boolean_mask_rather_than_add_it_as_zeros_and_ones():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(InputError, match="mask must be a float"):
        manualbp.functional.attention_weights(q, k, torch.ones(3, 5, dtype=torch.bool))
