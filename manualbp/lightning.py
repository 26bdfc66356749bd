"""ClassifierModule: a LightningModule training a digit classifier with manual or autograd backprop."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from manualbp.checkpoints import check_checkpoint_fits
from manualbp.convert import convert, layer_summary
from manualbp.functional._validation import check_int
from manualbp.models import Activation, Backend, Cell, cross_entropy, layers, lenet5, mlp, recurrent
from manualbp.per_sample.dp import DPSGD, DifferentialPrivacy
from manualbp.rules import RuleName, apply_rule

Arch = Literal["mlp", "lenet5", Cell]


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classification of images (N, C, H, W) into ``num_classes`` classes.

    ``backend="manual"`` builds the network from manualbp.nn (or converts ``net`` with ``manualbp.convert``)
    and takes the loss from manualbp's cross entropy, so every gradient of a step comes from a hand-written
    backward; ``"autograd"`` builds the identical network (same layer names, same initial weights for the
    same seed) from torch.nn. Logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.
    ``predict_step`` returns the class probabilities (N, num_classes).

    The optimizer is Adam (lr 1e-3) unless chosen otherwise: on the command line with LightningCLI's
    ``--optimizer`` and ``--lr_scheduler`` (any torch optimizer and scheduler), in Python by overriding
    ``configure_optimizers``. The recurrent networks (``rnn``, ``lstm``, ``gru``) clip the gradient norm to 1
    unless the trainer clips (``--trainer.gradient_clip_val``), and when nothing else chooses their optimizer
    (when ``configure_optimizers`` runs, as in Python) they train with Adam under a one-cycle schedule peaking
    at lr 5e-3. On the first 10,000 MNIST images (batches of 128, 10 epochs, seed 0) that gave the LSTM a test
    accuracy of 0.973-0.975 (both backends, 1 or 2 threads), against 0.958-0.961 with Adam at a constant 1e-3.

    Args:
        arch: built-in network: ``mlp`` (Flatten, Linear+activation per hidden width, Linear), ``lenet5``, or
            ``rnn`` (tanh), ``lstm``, ``gru``: a recurrent network reading the image row by row (H steps of
            C·W pixels) and classifying from its last hidden state with a Linear layer.
        net: your own network (any torch.nn.Module mapping (N, *in_shape) to (N, num_classes) logits),
            used instead of ``arch``; on the manual backend its layers are swapped by ``manualbp.convert``.
        backend: ``manual`` (hand-written backward) or ``autograd`` (torch.nn and autograd).
        hidden: widths of the MLP's hidden layers.
        activation: activation after each hidden layer of the MLP and LeNet-5.
        dropout: dropout probability after each hidden layer of the MLP (0 for none).
        hidden_size: features of the hidden state of ``rnn``, ``lstm`` and ``gru``.
        num_layers: stacked recurrent layers of ``rnn``, ``lstm`` and ``gru``.
        bidirectional: ``rnn``, ``lstm`` and ``gru`` read the rows in both directions, and classify from
            both directions' last hidden states.
        in_shape: shape (C, H, W) of one image; linked from the data module by the ``manualbp`` command.
        num_classes: number of classes; linked from the data module by the ``manualbp`` command.
        rule: the learning rule that carries the error backward through the network's Linear and Conv2d
            layers (``manualbp.rules``): ``backprop`` (the true gradient), ``feedback_alignment`` (a fixed
            random B instead of W), ``sign_symmetry`` (sign(W)), ``direct_feedback_alignment`` (the output
            error projected to every hidden layer by its own fixed B). The fixed matrices are the layers'
            ``feedback_weight`` buffers, drawn from seed 0 and saved in checkpoints. Manual backend only;
            ``manualbp.callbacks.Alignment`` logs how close each layer's update comes to the true gradient.
        dp: train with DP-SGD (``--model.dp.noise_multiplier``, ``--model.dp.max_grad_norm``, ``--model.dp.delta``;
            None, the default: no DP). The training batches are drawn by Poisson sampling (Opacus's
            ``DPDataLoader`` replaces the data module's training loader: each image in with probability
            1 / batches per epoch), each image's gradient is clipped to total norm ``max_grad_norm`` inside the
            hand-written backward (``manualbp.clip_per_sample``), Gaussian noise of std
            ``noise_multiplier · max_grad_norm`` is added to their sum, which is divided by the expected batch
            size (``manualbp.per_sample.add_noise``, as Opacus's optimizer), and ``epsilon``, the privacy spent
            at ``delta`` by Opacus's RDP accountant, is logged every epoch (and kept in checkpoints). Needs the
            manual backend, a data module, one batch per optimizer step and no trainer-level gradient clipping
            (the recurrent archs' default clipping to norm 1 is then left out); Opacus must be installed.
        compile: run the network through ``torch.compile`` (inductor), compiled in place
            (``self.net.compile()``: parameter names and checkpoints stay as they are). The first steps compile
            (seconds), the last smaller batch of an epoch once more. Either backend; the manual network's
            hand-written backward is traced into the compiled graph. Not with ``dp``: DP-SGD's clipping is not
            verified under compilation (the per-sample seam is a global mode that the compiled graph must guard on).
    """

    def __init__(
        self,
        arch: Arch = "mlp",
        net: torch.nn.Module | None = None,
        backend: Backend = "manual",
        hidden: Sequence[int] = (800,),
        activation: Activation = "relu",
        dropout: float = 0.0,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        rule: RuleName = "backprop",
        dp: DifferentialPrivacy | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(dp, DifferentialPrivacy):  # a plain dict in the hyperparameters (saved below): checkpoints
            dp = dataclasses.asdict(dp)  # then load with torch.load's weights_only, and hparams.yaml stays plain
        if not 0 <= dropout < 1:
            raise ValueError(f"ClassifierModule: dropout must lie in [0, 1), got {dropout}")
        check_int("ClassifierModule", "num_classes", num_classes, 2)
        self._save_hyperparameters_without_modules()
        self._recurrent = net is None and arch in get_args(Cell)  # their training defaults differ
        if net is not None:
            self.net = _own_network(net, backend)
        elif arch == "mlp":
            self.net = mlp(hidden, activation, dropout, in_shape, num_classes, backend)
        elif arch == "lenet5":
            self.net = lenet5(in_shape, num_classes, activation, backend)
        elif self._recurrent:
            self.net = recurrent(arch, hidden_size, num_layers, bidirectional, in_shape, num_classes, backend)
        else:
            raise ValueError(f"ClassifierModule: arch must be one of {', '.join(get_args(Arch))}, got {arch!r}")
        if rule != "backprop":
            if backend != "manual":
                raise ValueError(
                    f"ClassifierModule: rule={rule!r} needs backend='manual' (a learning rule changes the "
                    "hand-written backward; autograd's is backprop)"
                )
            # the layers are manual already: the step of convert(net, rule=...) that follows the swap; a convolution's
            # direct feedback matrix is sized by its block's output on an example input
            apply_rule(self.net, rule, example_input=torch.zeros(2, *in_shape))
        if isinstance(dp, Mapping):  # as the hyperparameters hold it
            dp = DifferentialPrivacy(**dp)
        if dp is not None:
            _check_dp(dp, backend)
        self._dp = None if dp is None else DPSGD(dp)
        if compile:
            if dp is not None:
                raise ValueError(
                    "ClassifierModule: compile=True and dp (DP-SGD) are not supported together: DP-SGD's per-sample "
                    "clipping is not verified under compilation; train with dp without compile"
                )
            self.net.compile()
        self.loss_fn = cross_entropy(backend)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def _save_hyperparameters_without_modules(self) -> None:
        """``save_hyperparameters()``, except a ``net`` given as a module object in Python: its weights are in
        the state dict already (pass it again to ``load_from_checkpoint``). Through the ``manualbp`` command
        ``net`` is saved as its class path and arguments, from which ``load_from_checkpoint`` rebuilds it."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("net"), torch.nn.Module):
            self.save_hyperparameters(ignore=["net"])

    @property
    def example_input_array(self) -> torch.Tensor:
        """Two blank images (2, *in_shape) in the module's dtype and on its device, for Lightning's model
        summary. The trainer's precision plugin casts the module (float64 under ``precision="64-true"``,
        bfloat16 under ``"bf16-true"``) and every batch it feeds (``Precision.convert_input``), but not this
        example: made in the module's dtype, it fits the layers at every precision."""
        return torch.zeros(2, *self.hparams.in_shape, dtype=self.dtype, device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self._dp is not None:  # DP-SGD: the summed loss, whose clipped gradient gets the noise (see dp)
            loss = self.loss_fn(self(images), labels, reduction="sum")
            if len(labels):  # a Poisson batch may be empty
                self.log("train_loss", loss.detach() / len(labels), prog_bar=True, batch_size=len(labels))
            return loss
        loss = self.loss_fn(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    # ---- DP-SGD (dp): Poisson batches, per-sample clipping in the backward, noise, privacy accounting ------------

    def setup(self, stage: str) -> None:
        """With ``dp``, the data module's training loader is replaced by Opacus's Poisson-sampling one for the fit."""
        if self._dp is None or stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ValueError("ClassifierModule(dp=...): DP-SGD training needs a data module (its training loader is "
                             "replaced by a Poisson-sampling one)")
        make_loader = datamodule.train_dataloader
        datamodule.train_dataloader = lambda: self._dp.poisson_loader(make_loader())

    def teardown(self, stage: str) -> None:
        datamodule = None if self._trainer is None else self.trainer.datamodule
        if self._dp is not None and stage == "fit" and datamodule is not None:
            vars(datamodule).pop("train_dataloader", None)  # the data module's own loader again

    def on_fit_start(self) -> None:
        if self._dp is None:
            return
        if self.trainer.gradient_clip_val is not None:
            raise ValueError("ClassifierModule(dp=...): DP-SGD clips each sample's gradient (dp.max_grad_norm); "
                             "leave --trainer.gradient_clip_val unset")
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError("ClassifierModule(dp=...): DP-SGD takes one Poisson batch per optimizer step; "
                             "leave --trainer.accumulate_grad_batches at 1")

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """With ``dp``, the backward inside ``clip_per_sample``: ``p.grad`` is the sum of the clipped per-sample
        gradients."""
        if self._dp is None:
            return super().backward(loss, *args, **kwargs)
        with self._dp.clip(self.net):
            super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``dp``: the noise, the division by the expected batch size, and one step of the accountant."""
        if self._dp is not None:
            self._dp.privatize(p for p in self.net.parameters() if p.requires_grad)

    def on_train_epoch_end(self) -> None:
        if self._dp is not None:
            self.log("epsilon", self._dp.epsilon(), prog_bar=True)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: torchmetrics.Metric) -> None:
        images, labels = batch
        logits = self(images)
        # sync_dist: under DDP, the mean over every rank's share of the data (accuracy syncs by itself)
        self.log(f"{stage}_loss", self.loss_fn(logits, labels), prog_bar=True, sync_dist=True)
        accuracy(logits, labels)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The class probabilities softmax(logits), (N, num_classes), of the batch's images."""
        return torch.softmax(self(batch[0]), dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam with lr 1e-3: the default when nothing else chooses (the ``manualbp`` command's ``--optimizer``
        replaces this method, as LightningCLI does). The recurrent archs: Adam under ``OneCycleLR`` with a peak lr
        of 5e-3 over the fit's steps (up from 2e-4 in the first 30%, then down to 2e-8, along cosines), stepped
        every step; a constant lr of 1e-3 when the trainer sets no end to the fit. The schedule's length is fixed
        when the fit starts: a fit resumed with more epochs than that stops at the schedule's end (OneCycleLR
        raises), so resume with the same ``max_epochs``."""
        steps = self._trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        if not self._recurrent or not math.isfinite(steps):
            return optimizer
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Lightning's clipping as the trainer sets it; the recurrent archs clip the gradient norm to 1 when it
        sets none (an RNN's gradient through many steps can spike)."""
        if gradient_clip_val is None and self._recurrent and self._dp is None:  # DP-SGD clips per sample
            gradient_clip_val, gradient_clip_algorithm = 1.0, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the state of the random generator of the model's device type, so that a fit resumed from this
        checkpoint draws the same dropout masks as one that never stopped."""
        checkpoint["rng_state"] = {self.device.type: _rng_state(self.device)}
        if self._dp is not None:
            checkpoint["dp_accountant"] = self._dp.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that ``checkpoint`` was made by this network (``CheckpointMismatchError`` naming the option
        that differs, or the first parameter that does not fit, instead of torch's state-dict traceback).

        When a fit resumes from it on the same device type, restore its random generator state; loading the
        weights to test, predict or with ``load_from_checkpoint`` leaves the random generators alone."""
        path = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(checkpoint, dict(self.hparams), self.state_dict(), path)
        resuming_fit = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        state = checkpoint.get("rng_state", {}).get(self.device.type)
        if resuming_fit and state is not None:
            _set_rng_state(state, self.device)
        if resuming_fit and self._dp is not None and "dp_accountant" in checkpoint:
            self._dp.load_state_dict(checkpoint["dp_accountant"])  # the privacy spent so far counts on

    def configure_callbacks(self) -> list[pl.Callback]:
        """Checkpoints, unless the trainer has checkpoint callbacks of the user's own (they win) or checkpointing
        is off (``enable_checkpointing=False``): the one with the best validation accuracy (``ckpt_path="best"``
        then means it) and ``last.ckpt``, written at the end of every epoch, to resume from
        (``--ckpt_path=.../last.ckpt``). They replace the plain ``ModelCheckpoint()`` Lightning adds by default
        (a ``ModelCheckpoint`` given with every setting at its default cannot be told apart from that one)."""
        checkpoints = self.trainer.checkpoint_callbacks
        if not checkpoints or not all(_is_lightning_default(c) for c in checkpoints):
            return []
        best = ModelCheckpoint(monitor="val_acc", mode="max", filename="{epoch}-{val_acc:.4f}")
        return [best, ModelCheckpoint(filename="last")]


def _check_dp(dp: DifferentialPrivacy, backend: Backend) -> None:
    if not isinstance(dp, DifferentialPrivacy):
        raise TypeError(f"ClassifierModule: dp must be a DifferentialPrivacy or None, got {type(dp).__name__}")
    if backend != "manual":
        raise ValueError(
            "ClassifierModule: dp (DP-SGD) needs backend='manual': each sample's gradient is clipped inside the "
            "hand-written backward (manualbp.clip_per_sample)"
        )


def _is_lightning_default(callback: pl.Callback) -> bool:
    """Whether ``callback`` is configured as the ``ModelCheckpoint()`` that Lightning adds when none is given."""
    default = ModelCheckpoint()
    settings = ("state_key", "dirpath", "filename", "save_last", "save_top_k", "save_weights_only")
    return type(callback) is ModelCheckpoint and all(getattr(callback, s) == getattr(default, s) for s in settings)


def _own_network(net: torch.nn.Module, backend: Backend) -> torch.nn.Module:
    """``net`` as it is (autograd) or converted to manual layers, printing which layers became manual and which
    stayed torch.nn, one line each."""
    if backend == "autograd":
        return net
    layers(backend)  # validates the name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # convert's warning lists every layer; the summary counts them
        net = convert(net)
    summary = layer_summary(net)
    lines = {
        "manual (hand-written backward)": summary["manual"],
        "stayed torch.nn (autograd backward)": summary["torch"],
    }
    for kind, counts in lines.items():
        if counts:
            _print_rank_zero(f"ClassifierModule: {kind}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return net


@rank_zero_only
def _print_rank_zero(message: str) -> None:
    print(message)


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that random ops on ``device`` (dropout) draw from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
