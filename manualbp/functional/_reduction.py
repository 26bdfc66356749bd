"""The reduction seam of every parametrised layer, and the per-sample terms its layer kinds share.

A parametrised layer's backward does two things with G = dL/dy: **feedback**, dL/dx = G · W (its one place is
``manualbp.rules.feedback``), and **reduction**, the parameter gradients summed over the batch,
dL/dW = Σ_n G_nᵀ x_n. The reduction's one place is here, ``REDUCTION``: every parametrised layer's backward
(``linear_grads`` for Linear and LinearReLU, ``conv2d_grads`` for Conv2d, the normalisation Functions; with
or without a learning rule) forms its parameter gradients through

    REDUCTION.mode is None:  the plain reduction (``linear_reduction``, ``conv2d_reduction``, ...), as always;
    otherwise:               ``REDUCTION.mode.reduce(ctx, terms)`` -> (dL/dW, dL/db)

(the recurrent layers: one gradient per parameter, (dL/dW_ih, dL/dW_hh, dL/db_ih, dL/db_hh[, dL/dW_hr])),
where ``terms`` holds the layer's factors (G and x, nothing computed yet) and knows, for its layer kind:

    terms.needs            for each parameter (weight, bias, ...): whether its gradient is asked for
    terms.ordinals         the parameters' positions among the Function's tensor inputs (its graph node's
                           ``next_functions``), to find the parameters they belong to
    terms.batched, .batch  whether x has a batch dim, and its size N
    terms.reduce(scale)    the plain reduction with each sample's G_n scaled by scale[n] (None: 1)
    terms.per_sample(s, out) (dL/dW_n, dL/db_n) for every n, of G scaled by s (a number; None: 1): tensors
                           (N, *W.shape), (N, *b.shape); written into ``out``'s tensors (one or None per
                           parameter) where the layer kind can and they fit
    terms.sq_norms()       (N,): ||dL/dW_n||² + ||dL/db_n||², computed the cheapest way (below)
    terms.weighted(c)      Σ_n c_n (dL/dW_n, dL/db_n), after ``sq_norms`` (from what it materialised, if it did)
    terms.total(ps, s)     the batch's (dL/dW, dL/db) given ``ps = per_sample(s)`` (a sum of them, or the plain
                           reduction where that is cheaper)
    terms.leading          (Linear, LinearReLU, LayerNorm, RMSNorm, Embedding) the first two dims of an input with
                           a time dim as given, else None; ``terms.time_major()`` the same terms with dim 1 as the batch
    terms.sequence         (recurrent layers) (layout of the output sequence, T, N)

A mode (per-sample gradients, per-sample clipping: ``manualbp.per_sample``) is written once against this
interface and applies to every layer. On the plain path the seam costs one attribute read per backward.

For the layers whose per-sample gradient is a sum of outer products (Linear: T = the positions of the
leading dims past the batch; Conv2d: T = the output positions, x unfolded into patches, one block per group),

    dL/dW_n = Σ_t G_ntᵀ x_nt       G_n: (T, O)   x_n: (T, K)   dL/dW_n: (O, K)

``OuterTerms`` materialises it (one batched matmul, ``outer_per_sample``; for a convolution one grouped
convolution) or, where that costs fewer operations (``ghost_is_cheaper``; always when T = 1), takes its
squared norm without it (``ghost_sq_norms``), from the ghost-norm identity

    ||Σ_t G_ntᵀ x_nt||² = Σ_{t,t'} (G_nt · G_nt') (x_nt · x_nt')      (= ||G_n||² ||x_n||² when T = 1).

A recurrent layer's parameters are the same sums with T the steps of the sequence (``SequenceTerms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch


class ReductionMode(Protocol):
    """What ``REDUCTION.mode`` holds while one is set (``manualbp.per_sample``'s ``PerSampleMode``)."""

    def reduce(self, ctx: Any, terms: Any) -> tuple[torch.Tensor | None, ...]: ...

    def refuse(self, ctx: Any, ordinals: Sequence[int], what: str, remedy: str | None = None) -> None: ...

    def loss(self, ctx: Any, kind: str, grad_out: torch.Tensor) -> None: ...


class ReductionSeam:
    """Where every parametrised layer's backward may hand its reduction over: ``mode`` None (the plain
    reduction) or an object with ``reduce(ctx, terms) -> (dL/dW, dL/db)`` and ``refuse(ctx, ordinals, what)``
    (a layer that mixes the samples of a batch), and ``loss(ctx, kind, dL/dy)``, called by the backward of
    ``cross_entropy`` and ``mse_loss`` (``kind``), where ``manualbp.curvature`` starts the loss Hessian's factor
    on its way back. Set by ``manualbp.per_sample`` and ``manualbp.curvature`` while one of their contexts is
    open, and read once per backward by each layer."""

    __slots__ = ("mode",)

    def __init__(self) -> None:
        self.mode: ReductionMode | None = None


REDUCTION = ReductionSeam()


def graph_node(ctx):
    """The autograd node of a backward's ``ctx``: ``ctx`` itself, or the node a stand-in for it carries
    (``manualbp.rules.feedback``'s ``_Needs``, as ``autograd_node``)."""
    return getattr(ctx, "autograd_node", None) or ctx


#: What writing one value of a new tensor costs, in multiply-adds, in ``ghost_is_cheaper``'s model (fitted below).
WRITE_COST = 64


def ghost_is_cheaper(positions: int, out_features: int, in_features: int) -> bool:
    """Whether ||Σ_t G_tᵀ x_t||² (per sample) costs less from the two T x T Gram matrices than from the
    materialised O x K sum. The model counts multiply-adds and, at ``WRITE_COST`` each, the values written:

        ghost: T² (O + K) + 2 T² · WRITE_COST        materialised: T O K + O K · WRITE_COST

    Timed on 2 CPU threads (float32, N = 128; 15 shapes, T from 2 to 784, O and K from 6 to 256): with
    WRITE_COST = 64 the model picks the faster way everywhere but at three near-ties (under 0.4 ms, at most
    1.35x slower); counting multiply-adds alone picks the 5x slower materialisation at T = 32, O = K = 64.
    LeNet-5's convolutions (T = 784 and 100 positions) materialise; a linear layer on (N, in) rows (T = 1)
    never does."""
    t, o, k = positions, out_features, in_features
    return t * t * (o + k + 2 * WRITE_COST) < o * k * (t + WRITE_COST)


def outer_per_sample(g: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_t g_ntᵀ x_nt per sample and block: g (N, B, T, O), x (N, B, T, K) -> (N, B, O, K). One position: a
    broadcast product (measured 1.3-2.5x faster than the batched matmul with inner size 1).

    ``out``: a contiguous tensor to write the result into, of any shape with N·B·O·K values (``into`` finds
    one). Writing into memory already touched is what makes it fast: 3.8 ms instead of 31 for mlp(800)'s first
    layer at N = 32, where a new tensor of 80 MB is page-faulted in as it is written."""
    out = None if out is None else out.view(*g.shape[:2], g.shape[-1], x.shape[-1])
    product = torch.mul if g.shape[2] == 1 else torch.matmul
    if out is not None and (torch._C._functorch.is_batchedtensor(g) or torch._C._functorch.is_batchedtensor(x)):
        return out.copy_(product(g.transpose(-1, -2), x))  # under vmap (``manualbp.curvature``): no out= rule
    return product(g.transpose(-1, -2), x, out=out)


def into(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``out`` when it is a contiguous tensor of ``shape`` with ``like``'s dtype and device, else a new one."""
    if (
        out is not None
        and out.shape == shape
        and out.dtype == like.dtype
        and out.device == like.device
        and out.is_contiguous()
    ):
        return out
    return like.new_empty(shape)


def ghost_sq_norms(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||Σ_t g_ntᵀ x_nt||² summed over the blocks, (N,), without the sums: g (N, B, T, O), x (N, B, T, K).
    ||g_n||² ||x_n||² for T = 1, else Σ_{t,t'} (g_nt · g_nt') (x_nt · x_nt') (the ghost-norm identity)."""
    if g.shape[2] == 1:
        return (g.square().sum(-1) * x.square().sum(-1)).sum((1, 2))
    grams = g.matmul(g.transpose(-1, -2)) * x.matmul(x.transpose(-1, -2))
    return grams.sum((1, 2, 3)).clamp(min=0)  # rounding can leave a tiny negative where the norm is 0


def per_sample_factor(scale: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``scale`` (N,) shaped (N, 1, ...) to weight each sample's rows of ``grad_out`` (N, ...), in its dtype."""
    return scale.to(grad_out.dtype).reshape(-1, *[1] * (grad_out.dim() - 1))


#: The most values of per-sample weight gradients a layer keeps from its norm to its clipped sum (64 MiB in float32).
KEEP_LIMIT = 1 << 24


class OuterTerms:
    """Terms of a layer whose per-sample weight gradient is a sum of outer products over T positions, in B
    blocks of (O, K) (see the module docstring). A subclass sets ``grad_out``, ``needs``, ``batched``,
    ``batch``, ``weight_shape``, ``positions`` (T) and ``block`` ((O, K)), and gives ``factors(G)`` -> (G
    (N, B, T, O), x (N, B, T, K)), ``bias_per_sample(G)``, ``plain(G)`` (the plain reduction) and, when it has
    a faster way than the factors, ``weight_per_sample(G)``; G is dL/dy, possibly scaled per sample.

    Beyond the seam's interface: ``leading`` and ``time_major()`` where the subclass has them (see ``LinearTerms``);
    ``weighted(c)``, Σ_n c_n (dL/dW_n, dL/db_n), from the per-sample gradients
    ``sq_norms`` materialised (kept up to ``KEEP_LIMIT`` values: one weighted sum, where a second reduction
    would redo a convolution), else the plain reduction of c ⊙ G; and ``total(samples, s)``, the batch's
    gradient from per-sample ones of G scaled by s (their sum where T > 1, the plain reduction otherwise).
    """

    ordinals = (1, 2)  # weight and bias follow x among the Function's tensor inputs
    grad_out: torch.Tensor
    needs: tuple[bool, ...]
    batched: bool
    batch: int
    weight_shape: torch.Size
    positions: int
    block: tuple[int, int]
    kept: torch.Tensor | None = None

    if TYPE_CHECKING:  # what each subclass gives (see above)

        def factors(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

        def bias_per_sample(self, g: torch.Tensor) -> torch.Tensor: ...

        def plain(self, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def scaled(self, scale) -> torch.Tensor:
        """G with sample n's rows times scale[n] (a tensor (N,)), times ``scale`` (a number), or as it is (None)."""
        if scale is None:
            return self.grad_out
        if isinstance(scale, torch.Tensor):
            return self.grad_out * per_sample_factor(scale, self.grad_out)
        return self.grad_out * scale

    def weight_per_sample(self, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        out = into(out, (g.shape[0], *self.weight_shape), g)
        outer_per_sample(*self.factors(g), out=out)
        return out

    def weight_layout(self, grad_w: torch.Tensor) -> torch.Tensor:
        """dL/dW laid out as the plain reduction gives it."""
        return grad_w

    def per_sample(self, scale=None, out=(None, None)):
        g = self.scaled(scale)
        grad_w = self.weight_per_sample(g, out[0]) if self.needs[0] else None
        grad_b = self.bias_per_sample(g) if self.needs[1] else None
        return grad_w, grad_b

    def sq_norms(self) -> torch.Tensor:
        total: torch.Tensor | int = 0
        if self.needs[0]:
            if self.positions == 1 or ghost_is_cheaper(self.positions, *self.block):
                total = ghost_sq_norms(*self.factors(self.grad_out))
            else:
                grad_w = self.weight_per_sample(self.grad_out)
                total = grad_w.square().flatten(1).sum(1)
                self.kept = grad_w if grad_w.numel() <= KEEP_LIMIT else None
        if self.needs[1]:
            total = total + self.bias_per_sample(self.grad_out).square().sum(1)
        assert isinstance(total, torch.Tensor), "the seam asks for norms only where a parameter's gradient is needed"
        return total

    def reduce(self, scale=None):
        return self.plain(self.scaled(scale))

    def weighted(self, scale: torch.Tensor):
        if self.kept is None:
            return self.reduce(scale)
        scale = scale.to(self.grad_out.dtype)
        grad_w = self.weight_layout(torch.tensordot(scale, self.kept, dims=1))
        grad_b = torch.tensordot(scale, self.bias_per_sample(self.grad_out), dims=1) if self.needs[1] else None
        return grad_w, grad_b

    def total(self, samples, scale=None):
        if self.positions == 1:
            return self.reduce()
        grad_w, grad_b = samples
        factor = 1 if scale is None else 1 / scale
        return (
            None if grad_w is None else self.weight_layout(grad_w.sum(0) * factor),
            None if grad_b is None else grad_b.sum(0) * factor,
        )


def sequence_outer_sum(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Σ_{t,n} grad[t, n]ᵀ inputs[t, n]: one matmul over all steps, (T, N, O) x (T, N, K) -> (O, K).

    Computed as (inputsᵀ grad)ᵀ: with K the narrow side (K = I = 28 against O = 512 rows, T·N = 3584) the matmul
    takes 1.7 ms instead of 2.7 (one CPU thread); the transpose is copied, so the gradient is contiguous."""
    return inputs.flatten(0, 1).t().mm(grad.flatten(0, 1)).t().contiguous()


class SequenceTerms:
    """The reduction of a recurrent layer over a whole sequence, for the seam. ``entries``: one (G, X) per
    parameter, time-major, N = dim 1 the batch: a weight's G (T, N, O) and X (T, N, K), a bias's G (T, N, O)
    and None. Summed over the steps per sample, as ``OuterTerms`` sums over positions:

        dL/dW_n = Σ_t G[t, n]ᵀ X[t, n]   (O, K)          dL/db_n = Σ_t G[t, n]   (O,)

    the plain reduction is ``sequence_outer_sum`` (a bias: Σ_{t,n} G). A weight's squared norm comes from the
    ghost-norm identity over the T steps or from its materialised per-sample gradient, as ``ghost_is_cheaper``
    decides (kept up to ``KEEP_LIMIT`` values for ``weighted``).

    ``sequence``: (``layout``, T, N), the layout of the layer's output sequence ("batch_first", "time_major",
    or None when none is given out: a packed or padded-with-lengths one), for the modes' batch checks."""

    def __init__(
        self, entries, needs: tuple[bool, ...], ordinals: tuple[int, ...], batched: bool, layout: str | None = None
    ) -> None:
        self.entries, self.needs, self.ordinals, self.batched = entries, needs, ordinals, batched
        self.batch = entries[0][0].shape[1]
        self.sequence = (layout, entries[0][0].shape[0], self.batch)
        self.kept: list[torch.Tensor | None] = [None] * len(entries)

    @staticmethod
    def _scaled(g: torch.Tensor, scale) -> torch.Tensor:
        if scale is None:
            return g
        if isinstance(scale, torch.Tensor):
            return g * scale.to(g.dtype).reshape(1, -1, 1)
        return g * scale

    @staticmethod
    def _plain(g: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        return g.sum((0, 1)) if x is None else sequence_outer_sum(g, x)

    @staticmethod
    def _per_sample(g: torch.Tensor, x: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        if x is None:
            return g.sum(0)
        out = into(out, (g.shape[1], g.shape[2], x.shape[2]), g)
        outer_per_sample(g.transpose(0, 1).unsqueeze(1), x.transpose(0, 1).unsqueeze(1), out)
        return out

    def _each(self, compute):
        return tuple(
            compute(i, g, x) if need else None for i, ((g, x), need) in enumerate(zip(self.entries, self.needs))
        )

    def reduce(self, scale=None):
        return self._each(lambda _, g, x: self._plain(self._scaled(g, scale), x))

    def per_sample(self, scale=None, out=None):
        out = out or [None] * len(self.entries)
        return self._each(lambda i, g, x: self._per_sample(self._scaled(g, scale), x, out[i]))

    def sq_norms(self) -> torch.Tensor:
        def sq_norm(i, g, x):
            if x is not None and ghost_is_cheaper(g.shape[0], g.shape[2], x.shape[2]):
                return ghost_sq_norms(g.transpose(0, 1).unsqueeze(1), x.transpose(0, 1).unsqueeze(1))
            sample = self._per_sample(g, x)
            if x is not None:
                self.kept[i] = sample if sample.numel() <= KEEP_LIMIT else None
            return sample.square().flatten(1).sum(1)

        return sum(norm for norm in self._each(sq_norm) if norm is not None)

    def weighted(self, scale: torch.Tensor):
        def weighted(i, g, x):
            if self.kept[i] is not None:
                return torch.tensordot(scale.to(g.dtype), self.kept[i], dims=1)
            return self._plain(self._scaled(g, scale), x)

        return self._each(weighted)

    def total(self, samples, scale=None):
        factor = 1 if scale is None else 1 / scale
        return tuple(None if sample is None else sample.sum(0) * factor for sample in samples)
