"""The context battery's registries: the layer families the per-sample contexts support (small float64 networks,
each split in a ``head`` and a ``tail`` so that a way of running can checkpoint a part), the ways PyTorch offers
to run a backward, and the two contexts with both loss reductions.

One family, way and context make one test (``test_context_battery.py``): the context's results (``p.grad_sample``
and ``p.grad`` of ``per_sample_grads``; ``p.grad`` and ``norms`` of ``clip_per_sample``) equal the reference built
from a loop over single-sample batches through the plain backward (``reference_grads``), restricted to what the
way writes, or the way raises ``PerSampleError`` where no right answer can be given. Adding a family or a way is
one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

import manualbp
import manualbp.nn as mnn
from tests.per_sample.references import sample_loss, trainable

DTYPE = torch.float64


# ---- the layer families ---------------------------------------------------------------------------------------


class Outputs(torch.nn.Module):
    """A recurrent layer's output sequence alone."""

    def __init__(self, rnn: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class LastStep(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1]


@dataclass(frozen=True)
class Family:
    """A network (``head``, ``tail``) of one supported layer family and its input (``shape`` with the batch
    at ``batch_dim``, which the contexts are told by ``batch_first``)."""

    id: str
    build: Callable[[], tuple[torch.nn.Module, torch.nn.Module]]
    shape: tuple[int, ...]
    batch_dim: int = 0

    @property
    def batch_first(self) -> bool:
        return self.batch_dim == 0

    def network(self) -> torch.nn.Sequential:
        torch.manual_seed(0)
        head, tail = self.build()
        model = torch.nn.Sequential(head, tail).to(DTYPE)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.eval()
        return model

    def data(self, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, R): an input and the per-sample loss's weights R (shaped as the output)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.shape, generator=g, dtype=DTYPE) * scale
        with torch.no_grad():
            y = self.network()(x)
        return x, torch.randn(y.shape, generator=g, dtype=DTYPE)


def _mlp():
    return torch.nn.Sequential(mnn.Linear(6, 8), torch.nn.Tanh()), torch.nn.Sequential(
        mnn.LinearReLU(8, 7), mnn.Linear(7, 3)
    )


def _sequence():
    return torch.nn.Sequential(mnn.Linear(5, 6), mnn.LayerNorm(6)), torch.nn.Sequential(
        torch.nn.Tanh(), mnn.Linear(6, 2)
    )


def _conv():
    head = torch.nn.Sequential(mnn.Conv2d(2, 4, 3, padding=1, groups=2), mnn.BatchNorm2d(4), torch.nn.ReLU())
    return head, torch.nn.Sequential(mnn.Conv2d(4, 3, 3), torch.nn.Flatten(), mnn.Linear(27, 2))


def _lstm():
    head = torch.nn.Sequential(mnn.Linear(3, 4), torch.nn.Tanh())
    return head, torch.nn.Sequential(Outputs(mnn.LSTM(4, 5, batch_first=True)), LastStep(), mnn.Linear(5, 2))


def _gru_time_major():
    return Outputs(mnn.GRU(3, 4)), torch.nn.Sequential(mnn.Linear(4, 2))


class Tokens(torch.nn.Module):
    """Sequences of features (*, F) -> the embedding of each step's first feature, bucketed into ``vocabulary``
    tokens (the lowest bucket the padding index), plus a linear map of the features: the integer input is made
    inside the model, so every way runs on a float x (and ``torch.autograd.grad(loss, x)`` has a path to x)."""

    def __init__(self, features: int, vocabulary: int, dim: int) -> None:
        super().__init__()
        self.embedding = mnn.Embedding(vocabulary, dim, padding_idx=0)
        self.linear = mnn.Linear(features, dim)
        self.register_buffer("edges", torch.linspace(-1.0, 1.0, vocabulary - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.bucketize(x[..., 0].contiguous(), self.edges)) + self.linear(x)


def _tokens():
    return Tokens(3, 6, 4), torch.nn.Sequential(mnn.RMSNorm(4), torch.nn.Tanh(), mnn.Linear(4, 2))


def _vit():
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(8, 4, num_layers=1, num_heads=2, hidden_dim=4, mlp_dim=8, num_classes=3)
    return mnn.VisionTransformer.from_torch(vit), mnn.Linear(3, 2)


def _transformer(batch_first: bool):
    def build():
        layer = mnn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=batch_first, norm_first=batch_first)
        return layer, mnn.Linear(4, 2)

    return build


def _shared():
    shared = mnn.Linear(4, 4)
    return torch.nn.Sequential(shared, torch.nn.Tanh()), torch.nn.Sequential(shared, torch.nn.Tanh(), mnn.Linear(4, 2))


FAMILIES = [
    Family("mlp", _mlp, (4, 6)),
    Family("sequence", _sequence, (4, 3, 5)),
    Family("conv_batchnorm", _conv, (4, 2, 5, 5)),
    Family("lstm", _lstm, (4, 3, 3)),
    # T == N: a time-major sequence read batch-first would go unnoticed by its sizes
    Family("gru_time_major", _gru_time_major, (4, 4, 3), batch_dim=1),
    Family("shared_weight", _shared, (4, 4)),
    Family("embedding_rms_norm", _tokens, (4, 5, 3)),
    Family("embedding_rms_norm_time_major", _tokens, (5, 4, 3), batch_dim=1),
    # attention, its packed projection, the class token and the position embedding
    Family("vision_transformer", _vit, (4, 3, 8, 8)),
    Family("transformer_batch_first", _transformer(True), (4, 4, 4)),
    Family("transformer_time_major", _transformer(False), (5, 4, 4), batch_dim=1),
]


def reference_grads(
    family: Family, model: torch.nn.Module, x: torch.Tensor, r: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇ℓ_n for every sample n, (N, *p.shape) per parameter name: one single-sample batch at a time through the
    plain backward (no context open)."""
    params = trainable(model)
    rows = []
    for n in range(x.shape[family.batch_dim]):
        x_n, r_n = x.narrow(family.batch_dim, n, 1), r.narrow(family.batch_dim, n, 1)
        loss = sample_loss(model(x_n), r_n)
        rows.append(torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True))
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


def batch_loss(family: Family, y: torch.Tensor, r: torch.Tensor, loss_reduction: str) -> torch.Tensor:
    total = sample_loss(y, r)
    return total / y.shape[family.batch_dim] if loss_reduction == "mean" else total


# ---- the ways to run a backward ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What a way did inside the context: the batches it backpropagated (in order), the parameters it asked
    to write (None: all), and what ``torch.autograd.grad`` returned, if it was called."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    written: list[str] | None = None
    returned: tuple[torch.Tensor, ...] | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Way:
    """One way to run the backward inside an open context: ``run(family, model, loss_reduction)`` returns a
    ``Run``, or raises; ``raises``: the way can give no right answer, and must raise ``PerSampleError``."""

    id: str
    run: Callable[[Family, torch.nn.Sequential, str], Run]
    raises: str | None = None


def _loss(family, model, x, r, loss_reduction, forward=None):
    y = model(x) if forward is None else forward(x)
    return batch_loss(family, y, r, loss_reduction)


def _backward(family, model, loss_reduction):
    x, r = family.data(1)
    _loss(family, model, x, r, loss_reduction).backward()
    return Run([(x, r)])


def _backward_inputs(family, model, loss_reduction):
    """``backward(inputs=...)``: the first and the last parameter only."""
    x, r = family.data(1)
    names = list(trainable(model))
    written = [names[0], names[-1]]
    params = dict(model.named_parameters())
    _loss(family, model, x, r, loss_reduction).backward(inputs=[params[n] for n in written])
    return Run([(x, r)], written=written)


def _grad_of_input(family, model, loss_reduction):
    """``torch.autograd.grad(loss, x)``: no parameter is written; x's gradient is the plain one."""
    x, r = family.data(1)
    x = x.requires_grad_()
    returned = torch.autograd.grad(_loss(family, model, x, r, loss_reduction), x)
    return Run([(x.detach(), r)], written=[], returned=returned)


def _grad_of_parameters(family, model, loss_reduction):
    x, r = family.data(1)
    torch.autograd.grad(_loss(family, model, x, r, loss_reduction), list(model.parameters()))
    return Run([(x, r)])


def _retain_graph_twice(family, model, loss_reduction):
    x, r = family.data(1)
    loss = _loss(family, model, x, r, loss_reduction)
    loss.backward(retain_graph=True)
    loss.backward()
    return Run([(x, r), (x, r)])


def _accumulation(family, model, loss_reduction):
    """Two batches, one backward each, before any step: the results add up (clipped one backward at a time)."""
    batches = [family.data(1), family.data(2)]
    for x, r in batches:
        _loss(family, model, x, r, loss_reduction).backward()
    return Run(batches)


def _checkpointed(use_reentrant: bool):
    def run(family, model, loss_reduction):
        x, r = family.data(1)
        head, tail = model

        def forward(x):
            return checkpoint(tail, head(x), use_reentrant=use_reentrant)

        _loss(family, model, x, r, loss_reduction, forward).backward()
        return Run([(x, r)])

    return run


def _torch_op_on_a_parameter(family, model, loss_reduction):
    """A term of the loss that reads a parameter through a torch op (weight decay): no per-sample gradient."""
    x, r = family.data(1)
    first = next(iter(trainable(model).values()))
    (_loss(family, model, x, r, loss_reduction) + 1e-3 * first.square().sum()).backward()
    return Run([(x, r)])


def _create_graph(family, model, loss_reduction):
    x, r = family.data(1)
    _loss(family, model, x, r, loss_reduction).backward(create_graph=True)
    return Run([(x, r)])


def _functorch_inside(family, model, loss_reduction):
    """torch.func's grad inside the block is its own computation: the model's parameters are not written."""
    x, r = family.data(1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p):
        y = torch.func.functional_call(model, (p, buffers), (x,))
        return batch_loss(family, y, r, loss_reduction)

    returned = torch.func.grad(loss)(params)
    return Run([(x, r)], written=[], returned=tuple(returned.values()))


WAYS = [
    Way("backward", _backward),
    Way("backward_inputs", _backward_inputs),
    Way("autograd_grad_of_input", _grad_of_input),
    Way("autograd_grad_of_parameters", _grad_of_parameters, raises="returns to the caller"),
    Way("retain_graph_twice", _retain_graph_twice),
    Way("accumulation", _accumulation),
    Way("checkpoint_reentrant", _checkpointed(True)),
    Way("checkpoint_non_reentrant", _checkpointed(False)),
    Way("torch_op_on_a_parameter", _torch_op_on_a_parameter, raises="does not compute per-sample"),
    Way("create_graph", _create_graph, raises="create_graph"),
    Way("torch_func_inside", _functorch_inside),
]


# ---- the contexts ----------------------------------------------------------------------------------------------

CONTEXTS = [
    ("per_sample_grads", "mean"),
    ("per_sample_grads", "sum"),
    ("clip_per_sample", "mean"),
    ("clip_per_sample", "sum"),
]


def open_context(name: str, model: torch.nn.Module, loss_reduction: str, batch_first: bool, max_grad_norm: float):
    if name == "per_sample_grads":
        return manualbp.per_sample_grads(model, loss_reduction, batch_first=batch_first)
    return manualbp.clip_per_sample(model, max_grad_norm, loss_reduction, batch_first=batch_first)


def clipped(per_sample: dict[str, torch.Tensor], max_grad_norm: float, loss_reduction: str):
    """(norms (N,), name -> Σ_n c_n g_n (over N for "mean")), the norms over the given parameters only."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_sample.values()], 1).norm(dim=1)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    sums = {name: torch.einsum("n,n...->...", factors, g) for name, g in per_sample.items()}
    n = norms.shape[0]
    return norms, {name: s / n if loss_reduction == "mean" else s for name, s in sums.items()}
