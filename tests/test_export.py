"""Tracing and exporting eval-mode models: ``torch.jit.trace``, ``torch.export`` and the dynamo ONNX exporter
record our layers; the TorchScript ONNX exporter records all but the fused ReLU + MaxPool2d, which names
itself and the way out."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.testing import assert_close

import manualbp
import manualbp.nn as mnn
from manualbp.models import lenet5


def _lenet5() -> torch.nn.Module:
    return lenet5(in_shape=(1, 28, 28)).eval()


def test_jit_trace_records_a_model_with_flatten_and_the_fused_pool() -> None:
    model, x = _lenet5(), torch.randn(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    assert_close(traced(x), model(x))


@pytest.mark.parametrize("start_dim, end_dim", [(0, -1), (1, -1), (1, 2), (-2, -1)])
def test_flatten_traces(start_dim: int, end_dim: int) -> None:
    layer, x = mnn.Flatten(start_dim, end_dim), torch.randn(2, 3, 4, 5)
    assert_close(torch.jit.trace(layer, x)(x), torch.flatten(x, start_dim, end_dim))


def test_torch_export_records_lenet5() -> None:
    model, x = _lenet5(), torch.randn(2, 1, 28, 28)
    assert_close(torch.export.export(model, (x,)).module()(x), model(x))


def test_dynamo_onnx_exporter_records_lenet5_with_a_dynamic_batch(tmp_path) -> None:
    """The ONNX file of a manual lenet5, exported at batch 2, computes the model's outputs at batch 5 (run by
    onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    model, x = _lenet5(), torch.randn(5, 1, 28, 28)
    program = torch.onnx.export(
        model, (x[:2],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
    )
    program.save(tmp_path / "lenet5.onnx")
    session = ReferenceEvaluator(str(tmp_path / "lenet5.onnx"))
    (logits,) = session.run(None, {session.input_names[0]: x.numpy()})
    assert_close(torch.from_numpy(logits), model(x).detach())


def test_torchscript_onnx_exporter_names_the_fused_pool_and_the_way_out() -> None:
    model, x = _lenet5(), torch.randn(2, 1, 28, 28)
    with warnings.catch_warnings(), pytest.raises(NotImplementedError, match=r"ReLUMaxPool2d.*manualbp\.to_torch"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False)


def test_torchscript_onnx_exporter_exports_the_other_layers_and_to_torch() -> None:
    x = torch.randn(2, 1, 28, 28)
    plain = torch.nn.Sequential(
        mnn.Conv2d(1, 4, 3),
        mnn.ReLU(),
        mnn.MaxPool2d(2),
        mnn.AvgPool2d(2),
        mnn.AdaptiveAvgPool2d(3),
        mnn.Flatten(),
        mnn.Linear(36, 10),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(plain, (x,), io.BytesIO(), dynamo=False)
        torch.onnx.export(manualbp.to_torch(_lenet5()), (x,), io.BytesIO(), dynamo=False)
