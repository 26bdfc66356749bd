r"""Per-sample gradients and per-sample clipping (DP-SGD) from the factors the hand-written backward holds.

A parametrised layer's backward does two things with G = dL/dy: feedback (dL/dx = G · W) and reduction
(dL/dW = Σ_n G_nᵀ x_n, summed over the batch). Per-sample gradients and clipping change only the reduction,
and every layer hands its reduction to one seam, ``manualbp.functional._reduction.REDUCTION`` (its docstring
states the interface): plain, the layer sums over the batch as it always did; inside one of the contexts
below, the layer passes its *terms* (G and x, with the formulas of its kind: per-sample gradients, their
squared norms, the reduction with each sample's G_n weighted) to the context's mode. The two modes are
written once, here, for Linear, LinearReLU (any leading dims), Conv2d (every stride, padding, dilation,
groups, bias or not), LayerNorm, GroupNorm, BatchNorm with fixed statistics (eval mode) and the recurrent layers (RNN,
LSTM, GRU, their cells; the sums over a sequence's steps), with or without a learning
rule (``manualbp.rules``: a rule changes the feedback, the seam the reduction; they compose).

``per_sample_grads(model, loss_reduction)``: around the backward, each of ``model``'s trainable parameters
p gets ``p.grad_sample``, (N, *p.shape), and ``p.grad`` as usual. Opacus's convention: row n is the gradient
of sample n's own loss term ℓ_n. With ``"mean"`` the loss is (1/N) Σ_n ℓ_n, its G carries the 1/N, and the
rows are scaled back by N (so ``p.grad_sample.mean(0)`` equals ``p.grad``); with ``"sum"`` (L = Σ_n ℓ_n)
they are taken as they come (``p.grad_sample.sum(0)`` equals ``p.grad``).

``clip_per_sample(model, max_grad_norm, loss_reduction) as clip``: around the backward, ``p.grad`` becomes
the mean (``"mean"``) or sum (``"sum"``) over the batch of the per-sample gradients g_n, each clipped to
total norm C = ``max_grad_norm`` over all parameters, g_n · c_n with c_n = min(1, C / (||g_n|| + 1e-6))
(Opacus's factor); ``clip.norms`` holds the (N,) norms ||g_n|| before clipping. In one backward pass, without
the (N, *p.shape) tensors where the layer allows it:

* each layer's backward keeps its terms (G and the x its backward holds anyway) and returns no parameter
  gradient; the first one queues a callback with the autograd engine (``queue_callback``), which runs when
  the backward has passed every layer;
* the callback sums each sample's squared norms over the layers, from the factors: ||G_n||² ||x_n||² for a
  linear layer on (N, in), the ghost-norm identity ||Σ_t G_ntᵀ x_nt||² = Σ_{t,t'} (G_nt · G_nt')(x_nt · x_nt')
  over the positions of a sequence or of a convolution's unfolded patches, or the materialised per-sample
  gradient where that costs fewer operations (``ghost_is_cheaper``; LayerNorm and BatchNorm's are the
  size of their parameters);
* with c known, each layer's gradient is its plain reduction of the weighted error signal, one matmul
  (a convolution: one correlation) per layer, written into ``p.grad``: (c ⊙ G)ᵀ x. With "mean",
  (1/N) Σ_n c_n (N G_nᵀ x_n) = Σ_n c_n G_nᵀ x_n, the same reduction; so both reductions need nothing more.
  A layer whose norms came from materialised per-sample gradients (kept up to 16M values) takes Σ_n c_n g_n
  of those instead: for a convolution one weighted sum where a second correlation would cost more.

Memory: the kept terms are the x every layer's backward holds anyway plus each layer's G, until the end of
the backward (about the activations once more), and the per-sample gradients of the layers that materialise.

A parameter used by several layers (shared weights) has its per-sample gradients materialised and summed
before the norm, so the clipping stays exact.

Rules both modes share (``_mode.PerSampleMode``): the model's trainable parameters are found from each
layer's graph node (its ``next_functions``, through autocast's casts), so the forward may run inside or
outside the context; layers not of ``model`` reduce as usual. In both modes the layers return no gradient for
the model's parameters and the mode writes them when the backward ends, for the parameters the engine writes in
that backward (``backward(inputs=...)``, ``autograd.grad`` of an input), a reentrant checkpoint's nested
backward counted with the backward it runs in; ``batch_first=False`` reads inputs with a time dim as (T, N, ...)
(``_mode``'s docstring states these rules). A layer that mixes the samples of a batch
(BatchNorm with batch statistics) raises ``PerSampleError`` naming it, on entry and in the backward; so does
a trainable parameter whose gradient comes from anything but these layers (a ``torch.nn`` layer or torch op, an
unsupported manual one, a term of the loss), an input without a batch dim, layers that disagree on the batch,
``torch.autograd.grad`` of a parameter and ``create_graph``. Outside a context nothing changes: the seam is
None, no hook is left, nothing is kept (only the ``grad_sample`` a ``per_sample_grads`` block leaves as its
result, replaced when the next block opens). One context at a time.

``dp``: DP-SGD around them (``DifferentialPrivacy``, its settings; ``add_noise``; ``PoissonSampler`` and
``PoissonLoader``, its batches; ``DPSGD``, a run's state, single-process or DDP), with Opacus's RDP accountant;
``manualbp.lightning.ClassifierModule(dp=...)`` trains with it.

``batch_norm_to_group_norm(model, groups=32)``: every BatchNorm (torch's or a manual twin) replaced, in place,
by GroupNorm(gcd(groups, C), C), as Opacus's ``ModuleValidator.fix`` does; a manual BatchNorm by the manual
GroupNorm. For a torch model ``manualbp.convert(ModuleValidator.fix(model), strict=True)`` gives the same; on
a model converted already Opacus's fix changes nothing (it matches exact types; ``replace_batch_norm``'s
docstring says more).
"""

from manualbp.per_sample._mode import PerSampleError
from manualbp.per_sample.clip import PerSampleClip, clip_per_sample
from manualbp.per_sample.dp import DPSGD, DifferentialPrivacy, PoissonLoader, PoissonSampler, add_noise
from manualbp.per_sample.grads import per_sample_grads
from manualbp.per_sample.replace_batch_norm import batch_norm_to_group_norm

__all__ = [
    "DPSGD",
    "DifferentialPrivacy",
    "PerSampleClip",
    "PerSampleError",
    "PoissonLoader",
    "PoissonSampler",
    "add_noise",
    "batch_norm_to_group_norm",
    "clip_per_sample",
    "per_sample_grads",
]
