"""``Alignment``: how closely a learning rule's weight updates follow the true gradient, layer by layer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from manualbp.callbacks._network import network
from manualbp.callbacks._run_folder import artefact_path
from manualbp.convert import to_torch


class Alignment(pl.Callback):
    r"""Every ``every_n_steps`` optimizer steps (step 0 included), log per layer the angle between the weight
    gradient the learning rule produced and the true (backprop) gradient on the same batch.

    From the command line::

        manualbp fit --model.rule=feedback_alignment --trainer.callbacks+=Alignment --trainer.callbacks.every_n_steps=10

    For a recorded step s, logged at step s to every logger of the trainer (CSV, TensorBoard, ...):

    * ``alignment/<param>/angle`` = ∠(ΔW_rule, ∇W) in degrees, arccos(⟨a, b⟩ / (‖a‖ ‖b‖)) over the whole
      tensor, for each trained weight (parameters of two dimensions or more; ``parameters="all"`` adds the
      biases), named as ``net.named_parameters()`` names it (``fc1.weight``). a = ``param.grad`` as the
      optimizer receives it (read in ``on_before_optimizer_step``, before any clipping), the gradient the
      rule's backward produced; b = the gradient of the same loss on the same batch, computed by the autograd
      twin of the network (``manualbp.to_torch``, which drops the rule) called with the network's own
      parameters (``torch.func.functional_call``: the weights are shared, not copied; buffers are copied so
      running statistics are left alone).

    This is the quantity of Lillicrap et al. 2016's Figure 2: under feedback alignment the angle of a hidden
    layer starts near 90° (random feedback) and falls well below it as the forward weights come to align
    with the feedback; it is 0 for the last layer (whose update no rule changes) and for backprop. A rule
    whose feedback carries no information stays near 90°. The angle does not depend on the loss scale (AMP)
    or on the optimizer.

    With gradient accumulation, b is summed over the micro-batches of the step, as a is. The true gradient
    needs its own forward pass: with dropout its masks are other draws than the step's, which adds noise to
    the angle. Under DDP the rule's gradient is the all-reduced one while b is the global-zero process's
    batch's: measure on one device. ``steps`` and ``history`` keep the logged values (one dict of metric ->
    value per recorded step). Training is not changed: the callback only reads, and runs its own forward and
    backward pass outside the step's graph. Only the global-zero process records.

    When fit ends (``on_fit_end``) the global-zero process writes, with ``figure=True``, ``alignment.png`` into the
    run folder (``trainer.log_dir``: ``lightning_logs/version_0`` with the CSV logger, ``default_root_dir``
    without a logger): ``manualbp.viz.plot_alignment`` of each logged angle over the recorded steps. It prints
    one line, the last recorded angles and the figure's path:
    ``Alignment: logged 20 steps; at step 380: fc1.weight 61.4°, out.weight 0.0°; figure lightning_logs/version_0/alignment.png``.

    The ``LightningModule`` must hold the network as ``net`` and the loss as ``loss_fn(logits, targets)``, and
    batches must be ``(inputs, targets)`` (``manualbp.lightning.ClassifierModule``'s).
    """

    def __init__(
        self, every_n_steps: int = 50, parameters: Literal["weights", "all"] = "weights", figure: bool = True
    ) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"Alignment: every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if parameters not in ("weights", "all"):
            raise ValueError(f"Alignment: parameters must be 'weights' or 'all', got {parameters!r}")
        if not isinstance(figure, bool):
            raise ValueError(f"Alignment: figure must be True or False, got {figure!r}")
        self.every_n_steps = every_n_steps
        self.parameters = parameters
        self.figure = figure
        self.steps: list[int] = []
        self.history: list[dict[str, float]] = []
        self._twin: torch.nn.Module | None = None
        self._recording = False
        self._true: dict[str, torch.Tensor] = {}

    # ---- hooks ----------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for attribute in ("net", "loss_fn"):
            if not callable(getattr(pl_module, attribute, None)):
                raise TypeError(
                    f"Alignment: {type(pl_module).__name__} has no `{attribute}` to compute the true gradient with"
                )
        self.steps, self.history = [], []
        self._twin = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._recording = trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0
        self._batch = batch if self._recording else None

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._recording or self._batch is None:
            return
        for name, grad in self.true_gradients(network(pl_module), pl_module.loss_fn, self._batch).items():
            self._true[name] = grad if name not in self._true else self._true[name] + grad
        self._batch = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self._true:
            return
        params = dict(network(pl_module).named_parameters())
        metrics = {
            f"alignment/{name}/angle": angle(grad, true)
            for name, true in self._true.items()
            if (grad := params[name].grad) is not None
        }
        self._true = {}
        step = trainer.global_step
        self.steps.append(step)
        self.history.append(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = artefact_path(trainer, "alignment.png")  # a broadcast from rank 0: every process asks
        if not trainer.is_global_zero or not self.history:
            return
        last = ", ".join(f"{k.split('/')[1]} {v:.1f}°" for k, v in self.history[-1].items())
        line = f"Alignment: logged {len(self.steps)} step{'' if len(self.steps) == 1 else 's'}; at step {self.steps[-1]}: {last}"
        if self.figure:
            line += f"; figure {self.write(path)}"
        print(line)

    # ---- the figure -----------------------------------------------------------------------------------------

    def write(self, path: str | Path) -> Path:
        """Plot each logged angle over the recorded steps (``manualbp.viz.plot_alignment``); returns the path."""
        from manualbp.viz import plot_alignment

        names = list(dict.fromkeys(name for metrics in self.history for name in metrics))  # first seen, first drawn
        angles = {name.split("/")[1]: [h.get(name, math.nan) for h in self.history] for name in names}
        plot_alignment(
            self.steps,
            angles,
            path,
            title=f"Alignment with the true gradient: every {self.every_n_steps} optimizer steps",
        )
        return Path(path)

    # ---- the true gradient ----------------------------------------------------------------------------------

    def true_gradients(self, net: torch.nn.Module, loss_fn: Any, batch: Any) -> dict[str, torch.Tensor]:
        """The backprop gradient of ``loss_fn(net(x), y)`` on ``batch`` = (x, y) for each tracked parameter,
        computed by the autograd twin of ``net`` (built once) with ``net``'s own parameters."""
        inputs, targets = batch[0], batch[1]
        if self._twin is None:
            self._twin = to_torch(net)
        params = {
            name: p
            for name, p in net.named_parameters()
            if p.requires_grad and (self.parameters == "all" or p.dim() >= 2)
        }
        state: dict[str, torch.Tensor] = dict(net.named_parameters())
        twin_buffers = dict(self._twin.named_buffers())
        state.update({name: b.detach().clone() for name, b in net.named_buffers() if name in twin_buffers})
        with torch.enable_grad():
            loss = loss_fn(torch.func.functional_call(self._twin, state, (inputs,)), targets)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {name: g.detach() for name, g in zip(params, grads) if g is not None}


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between ``a`` and ``b`` (same shape, flattened) in degrees, in float64; nan when either is zero."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    norms = float(a.norm() * b.norm())
    if norms == 0.0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b) / norms))))
