"""Lightning callbacks: ``GradientCheckCallback`` checks the hand-written backward while a model trains;
``LearningAnimation`` films backpropagation on one digit while the model trains (a GIF at the end of fit)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

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

    # ---- the contract: override for another loss or batch layout ----------------------------------------

    def reference_loss(self, pl_module: pl.LightningModule, twin: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``batch`` computed through ``twin`` (the autograd copy of ``pl_module.net``)."""
        inputs, targets = batch[0], batch[1]
        return F.cross_entropy(twin(inputs), targets)

    # ---- hooks --------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        if not any(isinstance(m, ManualModule) for m in pl_module.net.modules()):
            warnings.warn(
                f"GradientCheckCallback: {type(pl_module).__name__}.net has no manualbp layer; the check "
                "compares autograd with autograd",
                UserWarning,
                stacklevel=2,
            )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._rng = None, None
        if trainer.global_step % self.every_n_steps == 0:
            self._batch = batch
            self._rng = _rng_state()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if self._batch is None or trainer.global_step % self.every_n_steps != 0:
            return
        batch, rng = self._batch, self._rng
        self._batch, self._rng = None, None
        worst, max_abs, max_rel = self.compare(trainer, pl_module, batch, rng)
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

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch, self._rng = None, None  # a skipped step (training_step returned None) keeps nothing

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
    ) -> tuple[tuple[str, float, float] | None, float, float]:
        """Autograd's gradients of ``batch`` against the ones in ``pl_module``'s parameters.

        Returns (worst mismatching parameter as (name, max abs error, rel error) or None, max_abs_err, max_rel_err).
        """
        net = pl_module.net
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
        max_abs, max_rel, worst, worst_ratio = 0.0, 0.0, None, 1.0
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
            max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
            if ratio > worst_ratio:
                worst, worst_ratio = (prefix + name, abs_err, rel_err), ratio
        return worst, max_abs, max_rel


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


class LearningAnimation(pl.Callback):
    r"""Film backpropagation on one fixed digit while the model trains; write a GIF when training ends.

    From the command line (LightningCLI; the full class path, since the ``manualbp`` command does not import
    this module before parsing)::

        manualbp fit --trainer.callbacks+=manualbp.callbacks.LearningAnimation \
                     --trainer.callbacks.path=learning.gif --trainer.callbacks.every_n_steps=10

    The digit. The first example whose label is ``digit`` in the training set (``split="train"``: the dataset
    of ``trainer.datamodule.train_dataloader()``, or of ``trainer.train_dataloader`` without a datamodule),
    in the dataset's own order (not the shuffled loader's), so the same image is filmed in every run; or
    in the validation set (``split="val"``, the first validation loader's dataset), an image the network
    never trains on.

    A frame, recorded before the first step and after every ``every_n_steps``-th optimizer step (``None``:
    chosen so that about ``max_frames`` frames cover ``trainer.estimated_stepping_batches``), shows the four
    steps of backpropagation as labelled panels:

    1. forward pass: the image and each layer's activation y_l (flatten and dropout layers are left out);
    2. loss: the class probabilities with the true class marked, the loss −log p(digit), and the
       training loss of every batch so far (recorded by this callback from ``training_step``'s output);
    3. backward pass: each layer's error signal δ_l = ∂L/∂y_l and ∂L/∂x on the image;
    4. weight update: for each layer with parameters, ‖ΔW_l‖ = ‖θ_l(t) − θ_l(t−1)‖ over all its parameters
       (weight and bias): the size of the update the optimizer applied at the step just taken, on that
       step's batch (what training really did, Adam's or SGD's; not a gradient of the filmed digit).

    Panels 1 to 3 come from a separate forward and backward of the digit alone through ``pl_module.net``
    under ``manualbp.trace``, in eval mode (dropout off, batch norm on running statistics; the mode is
    restored afterwards), with ``pl_module.loss_fn`` when the module has one (``ClassifierModule``: the
    manual cross entropy on the manual backend) and ``F.cross_entropy`` otherwise. The backward is
    ``torch.autograd.grad``, which leaves every ``.grad`` untouched, so training is not changed.

    The GIF (matplotlib's ``PillowWriter``) is written in ``on_train_end`` on the global-zero process; more
    frames than ``max_frames`` are thinned evenly (first and last kept). ``frames`` keeps the recorded frame
    data (plain numpy arrays, see ``manualbp.viz.draw_learning_frame``).
    """

    def __init__(
        self,
        path: str = "learning.gif",
        every_n_steps: int | None = None,
        max_frames: int = 60,
        digit: int = 5,
        split: Literal["train", "val"] = "train",
        fps: float = 6.0,
        dpi: float = 72.0,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or int(every_n_steps) != every_n_steps
                                          or every_n_steps < 1):
            raise ValueError(f"LearningAnimation: every_n_steps must be an integer >= 1 or None, got {every_n_steps!r}")
        if max_frames < 2:
            raise ValueError(f"LearningAnimation: max_frames must be at least 2, got {max_frames!r}")
        if split not in ("train", "val"):
            raise ValueError(f"LearningAnimation: split must be 'train' or 'val', got {split!r}")
        if not fps > 0:
            raise ValueError(f"LearningAnimation: fps must be positive, got {fps!r}")
        self.path = path
        self.every_n_steps = every_n_steps
        self.max_frames = int(max_frames)
        self.digit = int(digit)
        self.split = split
        self.fps = float(fps)
        self.dpi = float(dpi)
        self.frames: list[dict[str, Any]] = []
        self.example_index: int | None = None
        self._every = 1
        self._image: torch.Tensor | None = None
        self._losses: list[tuple[int, float]] = []
        self._before: dict[str, list[torch.Tensor]] | None = None

    # ---- the digit ------------------------------------------------------------------------------------------

    def _dataset(self, trainer: pl.Trainer) -> Any:
        datamodule = trainer.datamodule
        if self.split == "train":
            loader = datamodule.train_dataloader() if datamodule is not None else trainer.train_dataloader
        else:
            loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
            if isinstance(loader, (list, tuple)):
                loader = loader[0]
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ValueError(f"LearningAnimation: found no {self.split} dataset to take a digit {self.digit} from")
        return dataset

    def _find_digit(self, dataset: Any) -> tuple[int, torch.Tensor]:
        tensors = getattr(dataset, "tensors", None)
        if tensors is not None and len(tensors) >= 2:  # TensorDataset: look at the labels at once
            hits = (torch.as_tensor(tensors[1]) == self.digit).nonzero()
            if len(hits):
                index = int(hits[0])
                return index, tensors[0][index]
        else:
            for index in range(len(dataset)):
                image, label = dataset[index][0], dataset[index][1]
                if int(label) == self.digit:
                    return index, torch.as_tensor(image)
        raise ValueError(f"LearningAnimation: no example with label {self.digit} in the {self.split} set")

    # ---- hooks ----------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(getattr(pl_module, "net", None), torch.nn.Module):
            raise TypeError(f"LearningAnimation: {type(pl_module).__name__} has no `net` torch.nn.Module to film")
        self.example_index, self._image = self._find_digit(self._dataset(trainer))
        self.frames, self._losses, self._before = [], [], None
        if self.every_n_steps is not None:
            self._every = int(self.every_n_steps)
        else:
            total = trainer.estimated_stepping_batches
            self._every = max(1, math.ceil(total / (self.max_frames - 1))) if math.isfinite(total) else 10
        if trainer.is_global_zero:
            self._record(trainer, pl_module, updates={})

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if (trainer.global_step + 1) % self._every == 0 and trainer.is_global_zero:
            self._before = {name: [p.detach().clone() for p in params] for name, params in self._layers(pl_module.net)}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append((trainer.global_step, float(loss.detach())))
        if self._before is not None and trainer.global_step % self._every == 0:
            updates = {}
            for name, params in self._layers(pl_module.net):
                before = self._before.get(name)
                if before is not None:
                    change = sum(float((p.detach() - b).double().pow(2).sum()) for p, b in zip(params, before))
                    updates[name] = math.sqrt(change)
            self._before = None
            self._record(trainer, pl_module, updates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.frames:
            self.write(self.path)

    # ---- recording and writing ------------------------------------------------------------------------------

    @staticmethod
    def _layers(net: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
        """Leaf modules with trainable parameters, with those parameters."""
        out = []
        for name, module in net.named_modules():
            if any(True for _ in module.children()):
                continue
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                out.append((name, params))
        return out

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, updates: dict[str, float]) -> None:
        from manualbp.trace import trace

        net = pl_module.net
        loss_fn = getattr(pl_module, "loss_fn", None) or F.cross_entropy
        x = self._image.to(pl_module.device, torch.float32).unsqueeze(0).requires_grad_(True)
        target = torch.tensor([self.digit], device=pl_module.device)
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad(), trace(net) as record:
                logits = net(x)
                loss = loss_fn(logits, target)
                (grad_x,) = torch.autograd.grad(loss, [x])
        finally:
            net.train(was_training)
        shown = [
            name for name, module in net.named_modules()
            if name in record.layers and not isinstance(module, (torch.nn.Flatten, torch.nn.Dropout))
        ]

        def numpy(t: torch.Tensor | None) -> Any:
            return None if t is None else t[0].detach().float().cpu().numpy()

        self.frames.append(
            dict(
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                image=self._image.detach().float().cpu().numpy(),
                label=self.digit,
                layers=shown,
                activations=[numpy(record.layers[n].activation) for n in shown],
                errors=[numpy(record.layers[n].error) for n in shown],
                input_grad=numpy(grad_x),
                probs=torch.softmax(logits.detach()[0].float(), 0).cpu().numpy(),
                loss=float(loss.detach()),
                n_losses=len(self._losses),
                updates=updates,
            )
        )

    def write(self, path: str) -> Any:
        """Write the recorded frames (thinned to ``max_frames``) as a GIF; returns the path."""
        from manualbp.viz import save_learning_animation

        frames = self.frames
        if len(frames) > self.max_frames:
            keep = sorted({round(i * (len(frames) - 1) / (self.max_frames - 1)) for i in range(self.max_frames)})
            frames = [frames[i] for i in keep]
        last = max(step for step, _ in self._losses) if self._losses else frames[-1]["step"]
        prepared = []
        for frame in frames:
            history = self._losses[: frame["n_losses"]]
            prepared.append(
                dict(
                    frame,
                    loss_steps=[s for s, _ in history],
                    loss_values=[v for _, v in history],
                    max_step=last,
                    update_note="‖ΔW_l‖ of the last optimizer step (on its batch)",
                )
            )
        return save_learning_animation(prepared, path, fps=self.fps, dpi=self.dpi)
