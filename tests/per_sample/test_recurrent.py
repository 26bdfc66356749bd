"""Per-sample gradients and clipping of the recurrent layers (RNN, LSTM, GRU, their cells; stacked,
bidirectional, batch-first, projected, packed), in float64, against torch's own layers run on one sequence at a
time and torch.func's vmap(grad), with both loss reductions."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.testing import assert_close

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn
from tests.per_sample.references import clipped_reference, sample_loss, trainable

TOL = dict(rtol=0, atol=1e-10)
BATCH = 4


@dataclass(frozen=True)
class SequenceCase:
    """``layer(*args, **kwargs)`` of ``manualbp.nn`` and ``torch.nn`` on a (steps, batch, features) input
    (batch first with ``batch_first``; a cell: (batch, features)); ``lengths``: the batch packed with them."""

    layer: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    steps: int = 5
    lengths: tuple[int, ...] | None = None

    @property
    def batch_dim(self) -> int:
        return 0 if self.kwargs.get("batch_first") or self.layer.endswith("Cell") else 1

    def build(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        manual = getattr(mnn, self.layer)(*self.args, **self.kwargs).double()
        reference = getattr(torch.nn, self.layer)(*self.args, **self.kwargs).double()
        reference.load_state_dict(manual.state_dict())
        return manual, reference

    def input(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(2)
        if self.layer.endswith("Cell"):
            return torch.randn(BATCH, self.args[0], generator=g, dtype=torch.float64)
        shape = [self.steps, self.steps]
        shape[self.batch_dim] = BATCH
        return torch.randn(*shape, self.args[0], generator=g, dtype=torch.float64)

    def run(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's output sequence (a cell: its h), zero beyond each sequence's length when packed."""
        if self.lengths is not None:
            packed = MF.pack_padded_sequence(x, list(self.lengths), batch_first=True, enforce_sorted=False)
            return MF.pad_packed_sequence(module(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        out = module(x)
        return out[0] if isinstance(out, tuple) else out

    def sample(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Sample n alone as a batch of one, cut to its length when packed."""
        x_n = x.narrow(self.batch_dim, n, 1)
        return x_n if self.lengths is None else x_n[:, : self.lengths[n]]


CASES = {
    "rnn-tanh": SequenceCase("RNN", (3, 4)),
    "rnn-relu-2layers-bidirectional-batch_first-nobias": SequenceCase(
        "RNN", (3, 4), dict(num_layers=2, nonlinearity="relu", bidirectional=True, batch_first=True, bias=False)
    ),
    "lstm": SequenceCase("LSTM", (3, 4)),
    "lstm-2layers-bidirectional-proj-batch_first": SequenceCase(
        "LSTM", (3, 4), dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True)
    ),
    "lstm-packed-bidirectional": SequenceCase(
        "LSTM", (3, 4), dict(bidirectional=True, batch_first=True), lengths=(5, 2, 4, 1)
    ),
    "gru-2layers-batch_first": SequenceCase("GRU", (3, 4), dict(num_layers=2, batch_first=True)),
    "gru-packed-nobias": SequenceCase("GRU", (3, 4), dict(batch_first=True, bias=False), lengths=(3, 5, 1, 2)),
    "rnn_cell": SequenceCase("RNNCell", (3, 4)),
    "lstm_cell": SequenceCase("LSTMCell", (3, 4)),
    "gru_cell": SequenceCase("GRUCell", (3, 4)),
}
CASE_PARAMS = [pytest.param(case, id=name) for name, case in CASES.items()]
REDUCTIONS = pytest.mark.parametrize("loss_reduction", ["mean", "sum"])


def _responses(case: SequenceCase, manual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = case.run(manual, x)
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)


def _loop_grads(
    case: SequenceCase, reference: torch.nn.Module, x: torch.Tensor, r: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇ℓ_n of torch's own layer, run on each sequence alone (what packing means)."""
    params = trainable(reference)
    rows = []
    for n in range(BATCH):
        x_n = case.sample(x, n)
        out = reference(x_n)
        y_n = out[0] if isinstance(out, tuple) else out
        r_n = case.sample(r, n)
        rows.append(torch.autograd.grad(sample_loss(y_n, r_n), list(params.values())))
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


def _vmap_grads(
    case: SequenceCase, manual: torch.nn.Module, x: torch.Tensor, r: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇ℓ_n by torch.func's vmap(grad) over the manual layer (torch's recurrent kernels have no batching rule),
    which runs its plain backward: the seam is not used under a torch.func transform."""
    params = {k: v.detach() for k, v in trainable(manual).items()}
    dim = case.batch_dim

    def loss_n(p, x_n, r_n):
        return sample_loss(case.run(lambda v: functional_call(manual, p, (v,)), x_n.unsqueeze(dim)), r_n.unsqueeze(dim))

    return vmap(grad(loss_n), in_dims=(None, dim, dim))(params, x, r)


@REDUCTIONS
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_recurrent_grad_sample_is_each_sequences_gradient(case, loss_reduction):
    manual, reference = case.build()
    x = case.input()
    r = _responses(case, manual, x)
    with manualbp.per_sample_grads(manual, loss_reduction=loss_reduction):
        batch_loss_ = sample_loss(case.run(manual, x), r)
        (batch_loss_ / BATCH if loss_reduction == "mean" else batch_loss_).backward()
    by_loop = _loop_grads(case, reference, x, r)
    by_vmap = _vmap_grads(case, manual, x, r) if case.lengths is None else by_loop
    for name, p in trainable(manual).items():
        assert p.grad_sample.shape == (BATCH, *p.shape), name
        assert_close(p.grad_sample, by_loop[name], **TOL, msg=name)
        assert_close(p.grad_sample, by_vmap[name], **TOL, msg=name)
        rows = p.grad_sample.mean(0) if loss_reduction == "mean" else p.grad_sample.sum(0)
        assert_close(rows, p.grad, **TOL, msg=name)


@REDUCTIONS
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_recurrent_clip_per_sample_clips_each_sequences_gradient(case, loss_reduction):
    manual, reference = case.build()
    x = case.input()
    r = _responses(case, manual, x)
    per_sample = _loop_grads(case, reference, x, r)
    norms, _ = clipped_reference(per_sample, 1.0, loss_reduction)
    max_grad_norm = norms.median().item()  # some sequences clipped, some not
    _, expected = clipped_reference(per_sample, max_grad_norm, loss_reduction)
    with manualbp.clip_per_sample(manual, max_grad_norm, loss_reduction=loss_reduction) as clip:
        loss = sample_loss(case.run(manual, x), r)
        (loss / BATCH if loss_reduction == "mean" else loss).backward()
    assert_close(clip.norms, norms, **TOL)
    for name, p in trainable(manual).items():
        assert_close(p.grad, expected[name], **TOL, msg=name)


def test_an_unbatched_is_refused():
    layer = mnn.GRU(3, 4).double()
    with pytest.raises(manualbp.per_sample.PerSampleError, match="batch dim"):
        with manualbp.per_sample_grads(layer):
            layer(torch.randn(5, 3, dtype=torch.float64))[0].sum().backward()
