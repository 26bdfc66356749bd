"""``GradientFlow``: log, layer by layer, the sizes of what backpropagation computes while a model trains."""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from manualbp.callbacks._network import network
from manualbp.callbacks._run_folder import artefact_path
from manualbp.trace import Trace, trace


class GradientFlow(pl.Callback):
    r"""Every ``every_n_steps`` optimizer steps (step 0 included), log per layer the norms of δ, ∂L/∂W and ΔW.

    From the command line::

        manualbp fit --trainer.callbacks+=GradientFlow --trainer.callbacks.every_n_steps=10

    For a recorded step s (the step that takes the parameters from W(s) to W(s+1)), logged at step s to every
    logger of the trainer (CSV, TensorBoard, ...); every norm is the 2-norm of the whole tensor:

    * ``gradflow/<layer>/error_norm`` = ‖δ_l‖₂ = ‖∂L/∂y_l‖₂ over the batch (all N rows), the error signal
      arriving at the output y_l of each leaf module of ``pl_module.net``, named as ``net.named_modules()``
      names it (``fc1``, ``features.0``). ``manualbp.trace`` records it with a tensor hook on y_l, which sees
      the gradient whatever made y_l, so both backends are covered: manualbp's layers and torch.nn's. With a
      mean loss δ carries the 1/N of the mean. A fused layer has one output: the manual backend's ``fc1`` (a
      ``LinearReLU``) reports ∂L/∂relu(z), where the autograd backend's ``fc1`` reports ∂L/∂z and ``act1``
      ∂L/∂relu(z). Layers whose output no gradient reaches are left out.
    * ``gradflow/<param>/grad_norm`` = ‖∂L/∂W‖₂ for each trained parameter, named as
      ``net.named_parameters()`` names it (``fc1.weight``): ``param.grad`` as the optimizer receives it, read
      in ``on_before_optimizer_step`` (the backward is complete, AMP has unscaled it, and it is not yet
      clipped).
    * ``gradflow/<param>/update_norm`` = ‖W(s+1) − W(s)‖₂: what the optimizer step changed (SGD without
      momentum: lr·‖∂L/∂W‖; Adam: a step of about lr per element), against a copy taken before the step.

    The metrics go to the loggers directly (``logger.log_metrics``), so ``log_every_n_steps`` does not thin
    them: ``every_n_steps`` alone decides. ``steps`` and ``history`` keep them (one dict of metric -> value
    per recorded step). With gradient accumulation, ∂L/∂W and ΔW are those of the optimizer step, δ that of
    its last micro-batch; under AMP with a loss scaler δ is divided by the scale, as the gradients are.

    When fit ends (``on_fit_end``) the global-zero process writes, with ``figure=True``, ``<trainer.log_dir>/gradient_flow.png``
    (the run folder: ``lightning_logs/version_0`` with the CSV logger, ``default_root_dir`` without a logger; see
    ``manualbp/callbacks/_run_folder.py``): ``manualbp.viz.plot_gradient_flow`` of ``grad_norm`` over the
    recorded steps for each weight matrix or kernel (parameters with two dimensions or more), and prints one
    line: ``GradientFlow: logged 5 steps; figure lightning_logs/version_0/gradient_flow.png``.

    Training is not changed: the trace adds tensor hooks and no node to the graph, and the callback only
    reads and copies. Only the global-zero process records.
    """

    def __init__(self, every_n_steps: int = 50, figure: bool = True) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"GradientFlow: every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if not isinstance(figure, bool):
            raise ValueError(f"GradientFlow: figure must be True or False, got {figure!r}")
        self.every_n_steps = every_n_steps
        self.figure = figure
        self.steps: list[int] = []
        self.history: list[dict[str, float]] = []
        self._tracing: ExitStack | None = None
        self._trace: Trace | None = None
        self._pending: tuple[int, dict[str, float], dict[str, torch.Tensor]] | None = None  # step, norms, W(s)

    # ---- hooks ----------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(getattr(pl_module, "net", None), torch.nn.Module):
            raise TypeError(f"GradientFlow: {type(pl_module).__name__} has no `net` torch.nn.Module to trace")
        self.steps, self.history = [], []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0:
            self._tracing = ExitStack()
            self._trace = self._tracing.enter_context(trace(network(pl_module)))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._trace is None:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        metrics = {
            f"gradflow/{name}/error_norm": _norm(layer.error) / scale
            for name, layer in self._trace.layers.items()
            if layer.error is not None
        }
        params = _trained(network(pl_module))
        metrics.update({f"gradflow/{name}/grad_norm": _norm(p.grad) for name, p in params if p.grad is not None})
        self._pending = trainer.global_step, metrics, {name: p.detach().clone() for name, p in params}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._close()
        if self._pending is None:
            return
        step, metrics, before = self._pending
        self._pending = None
        for name, p in _trained(network(pl_module)):
            if name in before:
                metrics[f"gradflow/{name}/update_norm"] = _norm(p.detach() - before[name])
        self.steps.append(step)
        self.history.append(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = artefact_path(trainer, "gradient_flow.png")  # a broadcast from rank 0: every process asks
        if not trainer.is_global_zero:
            return
        line = f"GradientFlow: logged {len(self.steps)} step{'' if len(self.steps) == 1 else 's'}"
        if self.figure and self.steps:
            line += f"; figure {self.write(path, network(pl_module))}"
        print(line)

    # ---- the figure -----------------------------------------------------------------------------------------

    def write(self, path: str | Path, net: torch.nn.Module) -> Path:
        """Plot ``grad_norm`` over the recorded steps for each weight matrix or kernel of ``net``; returns the path."""
        from manualbp.viz import plot_gradient_flow

        weights = [name for name, p in _trained(net) if p.ndim > 1]
        norms = {name: [h.get(f"gradflow/{name}/grad_norm", math.nan) for h in self.history] for name in weights}
        plot_gradient_flow(
            self.steps,
            norms,
            path,
            title=f"Gradient flow: every {self.every_n_steps} optimizer steps",
            ylabel="‖∂L/∂W‖ (weight gradient)",
        )
        return Path(path)

    def _close(self) -> None:
        """Remove the trace's hooks (a step's trace lives from its batch start to its batch end)."""
        if self._tracing is not None:
            self._tracing.close()
        self._tracing, self._trace = None, None


def _trained(net: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in net.named_parameters() if p.requires_grad]


def _norm(t: torch.Tensor) -> float:
    """‖t‖₂ over all elements, accumulated in float32 at least (a float16 tensor's norm would overflow)."""
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.promote_types(t.dtype, torch.float32)))
