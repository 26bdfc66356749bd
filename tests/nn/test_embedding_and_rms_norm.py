"""Embedding and RMSNorm beyond the registry's battery: conversion, from_pretrained, the options manualbp refuses
(sparse gradients; scale_grad_by_freq under the per-sample contexts), max_norm's in-place renorm (under vmap too),
the embedding's per-sample norms without the (N, V, D) tensor, and RMSNorm's default eps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.functional._reduction import REDUCTION
from manualbp.functional.embedding import EmbeddingTerms
from manualbp.per_sample import PerSampleError


def test_convert_swaps_embedding_and_rms_norm():
    model = manualbp.convert(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.RMSNorm(4)))
    assert type(model[0]) is mnn.Embedding and type(model[1]) is mnn.RMSNorm
    indices = torch.tensor([[1, 2, 3], [3, 9, 0]])
    assert_close(model(indices), manualbp.to_torch(model)(indices))


def test_from_pretrained_gives_the_manual_layer():
    table = torch.randn(5, 3)
    layer = mnn.Embedding.from_pretrained(table, padding_idx=1)
    assert type(layer) is mnn.Embedding and not layer.weight.requires_grad
    assert_close(layer(torch.tensor([4, 1])), table[[4, 1]])
    trainable = mnn.Embedding.from_pretrained(table, freeze=False, padding_idx=1)
    trainable(torch.tensor([1, 1, 2])).sum().backward()
    assert_close(trainable.weight.grad, torch.tensor([0.0, 0, 1, 0, 0]).unsqueeze(1).expand(5, 3))


def test_sparse_gradients_are_not_supported():
    with pytest.raises(NotImplementedError, match="sparse=True"):
        mnn.Embedding(4, 2, sparse=True)
    with pytest.raises(NotImplementedError, match="sparse=True"):
        MF.embedding(torch.tensor([0]), torch.randn(4, 2), sparse=True)
    with pytest.warns(UserWarning, match="sparse=True"):
        model = manualbp.convert(torch.nn.Sequential(torch.nn.Embedding(4, 2, sparse=True)))
    assert type(model[0]) is torch.nn.Embedding


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="embedding: expected input of integer indices"):
        MF.embedding(torch.tensor([0.0]), torch.randn(4, 2))
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        mnn.Embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="num_embeddings must be at least 0"):
        mnn.Embedding(-1, 2)
    with pytest.raises(ValueError, match=r"manualbp\.nn\.RMSNorm: eps must be non-negative"):
        mnn.RMSNorm(3, eps=-1.0)


@pytest.mark.parametrize("norm_type", [1.0, 2.0])
def test_max_norm_renorms_the_rows_read_in_place_as_torch(norm_type):
    table = torch.randn(8, 3) * 3
    manual, reference = table.clone().requires_grad_(), table.clone().requires_grad_()
    indices = torch.tensor([[0, 2, 2], [5, 0, 7]])
    y = MF.embedding(indices, manual, max_norm=1.0, norm_type=norm_type)
    y_ref = F.embedding(indices, reference, max_norm=1.0, norm_type=norm_type)
    assert_close(y, y_ref)
    assert_close(manual.detach(), reference.detach())  # the rows read renormalised, the others untouched
    assert_close(manual.detach()[[1, 3]], table[[1, 3]])
    g = torch.randn(y.shape)
    assert_close(torch.autograd.grad(y, manual, g), torch.autograd.grad(y_ref, reference, g))


def test_max_norm_under_vmap_renorms_every_slices_rows_as_a_loop_does():
    table = torch.randn(10, 4, dtype=torch.float64) * 3
    indices = torch.randint(0, 10, (3, 2, 5), generator=torch.Generator().manual_seed(0))
    batched, looped = table.clone(), table.clone()
    out = torch.func.vmap(lambda i: MF.embedding(i, batched, max_norm=1.0))(indices)
    loop = torch.stack([MF.embedding(i, looped, max_norm=1.0) for i in indices])
    assert_close(out, loop)
    assert_close(batched, looped)


def test_scale_grad_by_freq_is_refused_by_the_per_sample_contexts():
    model = torch.nn.Sequential(mnn.Embedding(5, 3, scale_grad_by_freq=True), mnn.Linear(3, 2))
    indices = torch.tensor([[0, 1, 1], [2, 1, 4]])
    with pytest.raises(PerSampleError, match=r"scale_grad_by_freq=True.*mixes the samples.*scale_grad_by_freq=False"):
        with manualbp.per_sample_grads(model):
            model(indices).sum().backward()
    assert REDUCTION.mode is None
    with pytest.raises(PerSampleError, match="scale_grad_by_freq"):
        with manualbp.clip_per_sample(model, 1.0):
            model(indices).sum().backward()


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding_norms_equal_those_of_the_materialised_per_sample_gradients(padding_idx):
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 4, (5, 9), generator=g)  # many repeats within each sample
    grad_out = torch.randn(5, 9, 3, generator=g, dtype=torch.float64)
    terms = EmbeddingTerms(grad_out, indices, 4, padding_idx, True)
    (per_sample,) = terms.per_sample()
    for n in range(5):  # each sample's gradient by the plain backward of its own rows
        w = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
        (expected,) = torch.autograd.grad(MF.embedding(indices[n], w, padding_idx), w, grad_out[n])
        assert_close(per_sample[n], expected)
    assert_close(terms.sq_norms(), per_sample.square().flatten(1).sum(1))
    weights = torch.rand(5, dtype=torch.float64)
    assert_close(terms.weighted(weights)[0], torch.einsum("n,n...->...", weights, per_sample))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_default_eps_is_torchs(dtype):
    x = torch.randn(3, 4, dtype=dtype) * 1e-5  # where eps matters
    weight = torch.randn(4, dtype=dtype)
    assert_close(MF.rms_norm(x, (4,), weight), F.rms_norm(x, (4,), weight))
    layer = mnn.RMSNorm(4, dtype=dtype)
    assert layer.eps is None
    assert_close(layer(x), torch.nn.RMSNorm(4, dtype=dtype)(x))
