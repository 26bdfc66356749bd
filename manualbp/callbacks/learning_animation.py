"""``LearningAnimation``: film backpropagation on one digit while the model trains (a GIF at the end of fit)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from manualbp.callbacks._network import network
from manualbp.callbacks._run_folder import artefact_path


class LearningAnimation(pl.Callback):
    r"""Film backpropagation on one fixed digit while the model trains; write a GIF when training ends.

    From the command line (LightningCLI)::

        manualbp fit --trainer.callbacks+=LearningAnimation --trainer.callbacks.every_n_steps=10

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

    The GIF (matplotlib's ``PillowWriter``, ``manualbp.viz.save_learning_animation``: 100 dpi unless ``dpi`` is
    given, as wide as the network's layers need) is written in ``on_fit_end`` on the global-zero process, which
    prints its path in one line (``LearningAnimation: wrote lightning_logs/version_0/learning.gif``). A relative
    ``path`` is taken inside the run folder, ``trainer.log_dir`` (``lightning_logs/version_N/`` with the CSV
    logger; ``default_root_dir`` without a logger), so each run keeps its own; an absolute one is used as given.
    More frames than ``max_frames`` are thinned evenly (first and last kept). ``frames`` keeps the recorded
    frame data (plain numpy arrays, see ``manualbp.viz.draw_learning_frame``).
    """

    def __init__(
        self,
        path: str = "learning.gif",
        every_n_steps: int | None = None,
        max_frames: int = 60,
        digit: int = 5,
        split: Literal["train", "val"] = "train",
        fps: float = 6.0,
        dpi: float | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or int(every_n_steps) != every_n_steps or every_n_steps < 1
        ):
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
        self.dpi = None if dpi is None else float(dpi)
        self.frames: list[dict[str, Any]] = []
        self.example_index: int | None = None
        self._every = 1
        self._image: torch.Tensor | None = None
        self._losses: list[tuple[int, float]] = []
        self._before: dict[str, list[torch.Tensor]] | None = None

    # ---- the digit ------------------------------------------------------------------------------------------

    def _dataset(self, trainer: pl.Trainer) -> Any:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, undeclared
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
            self._before = {
                name: [p.detach().clone() for p in params] for name, params in self._layers(network(pl_module))
            }

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append((trainer.global_step, float(loss.detach())))
        if self._before is not None and trainer.global_step % self._every == 0:
            updates = {}
            for name, params in self._layers(network(pl_module)):
                before = self._before.get(name)
                if before is not None:
                    change = sum(float((p.detach() - b).double().pow(2).sum()) for p, b in zip(params, before))
                    updates[name] = math.sqrt(change)
            self._before = None
            self._record(trainer, pl_module, updates)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = artefact_path(trainer, self.path)  # a broadcast from rank 0: every process asks
        if trainer.is_global_zero and self.frames:
            print(f"LearningAnimation: wrote {self.write(path)}")

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

        net = network(pl_module)
        image = self._image
        assert image is not None, "found in on_train_start"
        loss_fn = getattr(pl_module, "loss_fn", None) or F.cross_entropy
        x = image.to(pl_module.device, torch.float32).unsqueeze(0).requires_grad_(True)
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
            name
            for name, module in net.named_modules()
            if name in record.layers and not isinstance(module, (torch.nn.Flatten, torch.nn.Dropout))
        ]

        def numpy(t: torch.Tensor | None) -> Any:
            return None if t is None else t[0].detach().float().cpu().numpy()

        self.frames.append(
            dict(
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                image=image.detach().float().cpu().numpy(),
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

    def write(self, path: str | Path) -> Path:
        """Write ``frames_to_draw()`` as a GIF to ``path`` (as given); returns the path."""
        from manualbp.viz import save_learning_animation

        if self.dpi is None:
            return save_learning_animation(self.frames_to_draw(), path, fps=self.fps)
        return save_learning_animation(self.frames_to_draw(), path, fps=self.fps, dpi=self.dpi)

    def frames_to_draw(self) -> list[dict[str, Any]]:
        """The recorded frames thinned to ``max_frames``, each with the training loss up to it, as
        ``manualbp.viz.draw_learning_frame`` takes them."""
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
                    update_note="‖ΔW_l‖ of the last optimizer step\n(on its batch)",
                )
            )
        return prepared
