"""``GradientCheckCallback``: check the hand-written backward against autograd while a model trains."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from manualbp.callbacks._network import network
from manualbp.convert import to_torch
from manualbp.functional.dropout import dropout_mask
from manualbp.nn._base import ManualModule

OnMismatch = Literal["warn", "raise"]


class GradientMismatchError(RuntimeError):
    """The hand-written gradients of a training step disagree with autograd's beyond the tolerance."""


class GradientCheckCallback(pl.Callback):
    r"""Every ``every_n_steps`` optimizer steps (step 0 included), recompute the step's gradients with autograd.

    For the checked step, with parameters θ (the values the step's forward used) and batch B:

    * g = ∇_θ L(θ; B), the gradients the hand-written backward passes left in ``param.grad``;
    * r = ∇_θ L_ref(θ; B), computed by autograd on ``manualbp.to_torch(pl_module.net)`` (the same network
      with every manualbp layer swapped for its ``torch.nn`` twin, weights copied) in the same train/eval
      mode, with the same random state at the start of the forward (so dropout draws the same masks).

    Per parameter tensor and element, with e = |g - r| and tol = ``tolerance``, the errors logged at each
    checked step (to the trainer's loggers at that step, and through ``pl_module.log`` into
    ``trainer.callback_metrics``, which keeps the last checked step's values) are

    * ``gradcheck/max_abs_err`` = max over all parameters and elements of e;
    * ``gradcheck/max_rel_err`` = max over parameters of  max(e) / max(max|r|, tiny): each parameter's worst
      error relative to the scale of its reference gradient (an elementwise ratio would blow up wherever an
      entry of r happens to be near 0, which says nothing about the backward);

    and the step mismatches when some element has  e > tol + tol·|r|  (``torch.allclose`` with
    rtol = atol = ``tolerance``). Then a ``UserWarning`` is emitted (``on_mismatch="warn"``) or a
    ``GradientMismatchError`` (a ``RuntimeError``) raised (``"raise"``), naming the worst parameter as the
    LightningModule names it (``net.fc1.weight``): the one with the largest max(e / (tol + tol·|r|)).
    A parameter whose ``grad`` is None counts as a zero gradient; parameters not requiring grad are skipped.

    At the end of fit (``on_fit_end``, after the progress bar closes) the global-zero process prints one line, e.g.
    ``GradientCheckCallback: 4 steps checked, worst relative error 3.1e-07 (net.fc1.weight)``: the number of
    checked steps (``steps_checked``) and the largest ``gradcheck/max_rel_err`` over them (``max_rel_err``)
    with the parameter it came from (``max_rel_param``).

    Contract. The LightningModule exposes its network as ``net`` (``ClassifierModule`` does), every
    parameter that is trained lives in it, and the batch is ``(inputs, targets)``; the reference loss is
    torch's ``F.cross_entropy(net(inputs), targets)``. For another loss or batch layout override
    ``reference_loss(pl_module, twin, batch)``; it must compute, with autograd ops only, the same loss
    that ``training_step`` returns.

    Hooks. The batch and the CPU and CUDA random states are remembered in ``on_train_batch_start``. The
    comparison runs in ``on_before_optimizer_step``: the backward of the step is complete, the optimizer has
    not applied it, and — Lightning calls callbacks' hook before it clips gradients — the gradients are
    not yet clipped, so they are exactly what the backward passes produced (after AMP unscaling). The
    reference forward runs in the precision plugin's ``train_step_context`` (autocast, double), and the
    random state of the training run is restored afterwards, so the check does not change training.
    Dropout in the twin draws its mask with manualbp's ``dropout_mask`` (on any device) and applies it with
    an autograd multiplication, so both sides drop the same elements even where torch's own dropout
    kernel consumes the random stream differently (CUDA).

    On CUDA, cuDNN convolutions run in TF32 by default (``torch.backends.cudnn.allow_tf32``); the two sides
    may then round differently, and a convolutional model may need a looser ``tolerance``.

    Gradient accumulation is not supported (the gradients at the optimizer step are a sum over
    micro-batches): ``accumulate_grad_batches`` other than 1 raises a ``ValueError`` when fitting starts,
    as does manual optimization.
    """

    def __init__(self, every_n_steps: int = 50, tolerance: float = 1e-4, on_mismatch: OnMismatch = "warn") -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"GradientCheckCallback: every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance)
            or tolerance <= 0
        ):
            raise ValueError(f"GradientCheckCallback: tolerance must be a finite number > 0, got {tolerance!r}")
        if on_mismatch not in ("warn", "raise"):
            raise ValueError(f"GradientCheckCallback: on_mismatch must be 'warn' or 'raise', got {on_mismatch!r}")
        self.every_n_steps = every_n_steps
        self.tolerance = float(tolerance)
        self.on_mismatch = on_mismatch
        self._batch: Any = None
        self._rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.steps_checked = 0
        self.max_rel_err = 0.0
        self.max_rel_param: str | None = None

    # ---- the contract: override for another loss or batch layout ----------------------------------------

    def reference_loss(self, pl_module: pl.LightningModule, twin: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``batch`` computed through ``twin`` (the autograd copy of ``pl_module.net``)."""
        inputs, targets = batch[0], batch[1]
        return F.cross_entropy(twin(inputs), targets)

    # ---- hooks --------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps_checked, self.max_rel_err, self.max_rel_param = 0, 0.0, None
        if not isinstance(getattr(pl_module, "net", None), torch.nn.Module):
            raise TypeError(
                f"GradientCheckCallback: {type(pl_module).__name__} has no `net` torch.nn.Module; the callback "
                "rebuilds `pl_module.net` with autograd layers (see the callback's docstring for the contract)"
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "GradientCheckCallback: gradient accumulation is not supported (accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}); the check compares the gradients of one batch, use 1"
            )
        if not pl_module.automatic_optimization:
            raise ValueError("GradientCheckCallback: needs automatic optimization (automatic_optimization=True)")
        if not any(isinstance(m, ManualModule) for m in network(pl_module).modules()):
            warnings.warn(
                f"GradientCheckCallback: {type(pl_module).__name__}.net has no manualbp layer; the check "
                "compares autograd with autograd",
                UserWarning,
                stacklevel=2,
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._rng = None, None
        if trainer.global_step % self.every_n_steps == 0:
            self._batch = batch
            self._rng = _rng_state()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._batch is None or trainer.global_step % self.every_n_steps != 0:
            return
        batch, rng = self._batch, self._rng
        self._batch, self._rng = None, None
        worst, max_abs, max_rel, max_rel_param = self.compare(trainer, pl_module, batch, rng)
        self.steps_checked += 1
        if self.max_rel_param is None or max_rel > self.max_rel_err:
            self.max_rel_err, self.max_rel_param = max_rel, max_rel_param
        self._log(trainer, pl_module, {"gradcheck/max_abs_err": max_abs, "gradcheck/max_rel_err": max_rel})
        if worst is None:
            return
        name, abs_err, rel_err = worst
        message = (
            f"GradientCheckCallback: at step {trainer.global_step} the hand-written gradient of {name} differs "
            f"from autograd's: max abs error {abs_err:.3e}, max rel error {rel_err:.3e} "
            f"(tolerance {self.tolerance:g}: |g - r| <= tol + tol*|r| elementwise)"
        )
        if self.on_mismatch == "raise":
            raise GradientMismatchError(message)
        warnings.warn(message, UserWarning, stacklevel=2)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._rng = None, None  # a skipped step (training_step returned None) keeps nothing

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self.summary())

    def summary(self) -> str:
        """One line: the steps checked so far and the worst relative error with its parameter."""
        line = f"GradientCheckCallback: {self.steps_checked} step{'' if self.steps_checked == 1 else 's'} checked"
        if self.max_rel_param is not None:
            line += f", worst relative error {self.max_rel_err:.2g} ({self.max_rel_param})"
        return line

    @staticmethod
    def _log(trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        """Into ``trainer.callback_metrics`` (and the progress bar's) through ``pl_module.log``, and into the loggers
        directly, at the checked step only: Lightning would write a value logged with ``pl_module.log`` on every
        later step of the epoch as well (its on-step cache is cleared only at epoch end)."""
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, logger=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ---- the comparison -----------------------------------------------------------------------------------

    def compare(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        rng: tuple[torch.Tensor, list[torch.Tensor]] | None,
    ) -> tuple[tuple[str, float, float] | None, float, float, str | None]:
        """Autograd's gradients of ``batch`` against the ones in ``pl_module``'s parameters.

        Returns (worst mismatching parameter as (name, max abs error, rel error) or None, max_abs_err, max_rel_err,
        the name of the parameter with max_rel_err or None when no parameter has a gradient).
        """
        net = network(pl_module)
        twin = _with_mask_dropout(to_torch(net))
        named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
        twin_params = dict(twin.named_parameters())
        for _, p in twin.named_parameters():
            p.grad = None
        with _random_state(rng), torch.enable_grad(), trainer.precision_plugin.train_step_context():
            loss = self.reference_loss(pl_module, twin, batch)
        loss.backward()

        prefix = next((f"{n}." for n, m in pl_module.named_children() if m is net), "")
        tiny = torch.finfo(torch.float32).tiny
        tol = self.tolerance
        max_abs, max_rel, max_rel_param, worst, worst_ratio = 0.0, 0.0, None, None, 1.0
        for name, p in named:
            r = twin_params[name].grad
            g = p.grad
            if g is None and r is None:
                continue
            ref = torch.zeros_like(p) if r is None else r.detach()
            got = torch.zeros_like(p) if g is None else g.detach()
            err = (got.to(ref.dtype) - ref).abs()
            abs_err = err.max().item() if err.numel() else 0.0
            rel_err = abs_err / max(ref.abs().max().item() if ref.numel() else 0.0, tiny)
            ratio = (err / (tol + tol * ref.abs())).max().item() if err.numel() else 0.0
            if not math.isfinite(abs_err):  # nan/inf in either gradient: always the worst
                abs_err, rel_err, ratio = math.inf, math.inf, math.inf
            max_abs = max(max_abs, abs_err)
            if max_rel_param is None or rel_err > max_rel:
                max_rel, max_rel_param = rel_err, prefix + name
            if ratio > worst_ratio:
                worst, worst_ratio = (prefix + name, abs_err, rel_err), ratio
        return worst, max_abs, max_rel, max_rel_param


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


@contextmanager
def _random_state(state: tuple[torch.Tensor, list[torch.Tensor]] | None) -> Iterator[None]:
    """Run the block from ``state`` (the random state at the start of the batch), then put the current one back."""
    if state is None:
        yield
        return
    current = _rng_state()
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])
    try:
        yield
    finally:
        torch.set_rng_state(current[0])
        if current[1]:
            torch.cuda.set_rng_state_all(current[1])


class _MaskDropout(torch.nn.Dropout):
    """torch.nn.Dropout drawing its mask as manualbp's dropout does, applied by autograd's multiplication."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or input.numel() == 0:
            return input
        return input * dropout_mask(input, self.p)


def _with_mask_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every exact ``torch.nn.Dropout`` of ``model`` (a private copy) into a ``_MaskDropout``, in place."""
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = _MaskDropout
    return model
