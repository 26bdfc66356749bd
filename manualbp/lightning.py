"""ClassifierModule: a LightningModule training a digit classifier with manual or autograd backprop."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast, get_args

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.model_helpers import _restricted_classmethod
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig

from manualbp.checkpoints import CheckpointMismatchError, check_checkpoint_fits, check_trusted, saved_hyperparameters
from manualbp.convert import convert, layer_summary
from manualbp.functional._validation import check_int
from manualbp.models import Activation, Backend, Cell, ViTOptions, cross_entropy, layers, lenet5, mlp, recurrent
from manualbp.models import vit as vit_network
from manualbp.per_sample._mode import check_no_batch_statistics
from manualbp.per_sample.dp import DPSGD, DifferentialPrivacy
from manualbp.rules import RuleName, apply_rule, rule_layers

Arch = Literal["mlp", "lenet5", Cell, "vit"]

#: The archs that train with their own recipe (Adam under a one-cycle schedule, gradients clipped to norm 1).
OWN_RECIPE = (*get_args(Cell), "vit")


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classification of images (N, C, H, W) into ``num_classes`` classes.

    ``backend="manual"`` builds the network from manualbp.nn (or converts ``net`` with ``manualbp.convert``)
    and takes the loss from manualbp's cross entropy, so every gradient of a step comes from a hand-written
    backward; ``"autograd"`` builds the identical network (same layer names, same initial weights for the
    same seed) from torch.nn. Logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.
    ``predict_step`` returns the class probabilities (N, num_classes).

    The optimizer is Adam (lr 1e-3) unless chosen otherwise: on the command line with LightningCLI's
    ``--optimizer`` and ``--lr_scheduler`` (any torch optimizer and scheduler), in Python by overriding
    ``configure_optimizers``. The recurrent networks (``rnn``, ``lstm``, ``gru``) and ``vit`` clip the gradient norm to 1
    unless the trainer clips (``--trainer.gradient_clip_val``), and when nothing else chooses their optimizer
    (when ``configure_optimizers`` runs, as in Python) they train with Adam under a one-cycle schedule peaking
    at lr 5e-3. On the first 10,000 MNIST images (batches of 128, 10 epochs, seed 0) that gave the LSTM a test
    accuracy of 0.973-0.975 (both backends, 1 or 2 threads), against 0.958-0.961 with Adam at a constant 1e-3; and
    the vision transformer 0.9538 (autograd backend; the manual backend's run in ``experiments/results``), against
    0.9276 measured for the same network with Adam at a constant 1e-3.

    Args:
        arch: built-in network: ``mlp`` (Flatten, Linear+activation per hidden width, Linear), ``lenet5``,
            ``rnn`` (tanh), ``lstm``, ``gru``: a recurrent network reading the image row by row (H steps of
            C·W pixels) and classifying from its last hidden state with a Linear layer, or ``vit``: a vision
            transformer (``manualbp.models.vit``, its shape in ``vit``).
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
        vit: the shape of ``arch="vit"`` (``manualbp.models.ViTOptions``: ``patch_size``, ``hidden_dim``,
            ``num_layers``, ``num_heads``, ``mlp_dim``); None: its defaults.
        in_shape: shape (C, H, W) of one image; linked from the data module by the ``manualbp`` command.
        num_classes: number of classes; linked from the data module by the ``manualbp`` command.
        rule: the learning rule that carries the error backward through the network's Linear and Conv2d
            layers (``manualbp.rules``): ``backprop`` (the true gradient), ``feedback_alignment`` (a fixed
            random B instead of W), ``sign_symmetry`` (sign(W)), ``direct_feedback_alignment`` (the output
            error projected to every hidden layer by its own fixed B). The fixed matrices are the layers'
            ``feedback_weight`` buffers, drawn from seed 0 and saved in checkpoints. Manual backend only;
            ``manualbp.callbacks.Alignment`` logs how close each layer's update comes to the true gradient.
            A ``net`` converted with a rule already (``manualbp.convert(net, rule=...)``) keeps it, with its
            buffers: ``rule`` adds nothing then, and naming another rule is a ``ValueError``.
        dp: train with DP-SGD (``--model.dp.noise_multiplier``, ``--model.dp.max_grad_norm``, ``--model.dp.delta``,
            ``--model.dp.seed``, ``--model.dp.secure_mode``; None, the default: no DP). The training batches are
            drawn by Poisson sampling (a ``manualbp.per_sample.PoissonLoader`` replaces the data module's training
            loader: each image in with probability q = 1 / batches per epoch, each step's draw a function of the
            data module's seed and the step's number, so a resumed fit draws what an uninterrupted one draws and
            no two steps share a draw), each image's gradient is clipped to total norm ``max_grad_norm`` inside
            the hand-written backward (``manualbp.clip_per_sample``), Gaussian noise of std
            ``noise_multiplier · max_grad_norm`` is added to their sum, which is divided by the expected batch
            size (``manualbp.per_sample.add_noise``, as Opacus's optimizer), and ``epsilon``, the privacy spent
            at ``delta`` by Opacus's RDP accountant, is logged every epoch (and kept in checkpoints, with the
            noise generator's state). ``seed`` seeds the noise (None: fresh entropy every run); ``secure_mode``
            draws noise and batches from ``os.urandom``. Under DDP (``--trainer.strategy=ddp``) a step is the
            single-process step on the union of the ranks' batches: each rank takes its share of one Poisson
            batch (q from its own loader's length: batches of ``batch_size`` per rank on average), the clipped
            sums are added up across the ranks, and the noise is drawn once, on rank 0. Needs the manual
            backend, a data module, one batch per optimizer step and no trainer-level gradient clipping (the
            recurrent archs' and vit's default clipping to norm 1 is then left out); Opacus must be installed.
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
        vit: ViTOptions | None = None,
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        rule: RuleName = "backprop",
        dp: DifferentialPrivacy | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(dp, DifferentialPrivacy):  # a plain dict in the hyperparameters (saved below): checkpoints
            dp = dataclasses.asdict(dp)  # then load with torch.load's weights_only, and hparams.yaml stays plain
        if isinstance(vit, ViTOptions):
            vit = dataclasses.asdict(vit)
        if not 0 <= dropout < 1:
            raise ValueError(f"ClassifierModule: dropout must lie in [0, 1), got {dropout}")
        check_int("ClassifierModule", "num_classes", num_classes, 2)
        self._save_hyperparameters_without_modules()
        self._own_recipe = net is None and arch in OWN_RECIPE  # their training defaults differ
        if rule != "backprop" and backend != "manual":
            raise ValueError(
                f"ClassifierModule: rule={rule!r} needs backend='manual' (a learning rule changes the "
                "hand-written backward; autograd's is backprop)"
            )
        if net is not None:
            self.net = _own_network(net, backend, rule, in_shape)
        elif arch == "mlp":
            self.net = mlp(hidden, activation, dropout, in_shape, num_classes, backend)
        elif arch == "lenet5":
            self.net = lenet5(in_shape, num_classes, activation, backend)
        elif arch in get_args(Cell):
            cell = cast(Cell, arch)
            self.net = recurrent(cell, hidden_size, num_layers, bidirectional, in_shape, num_classes, backend)
        elif arch == "vit":
            shape = vit if isinstance(vit, ViTOptions) else ViTOptions(**(vit or {}))
            self.net = vit_network(
                **dataclasses.asdict(shape), in_shape=in_shape, num_classes=num_classes, backend=backend
            )
        else:
            raise ValueError(f"ClassifierModule: arch must be one of {', '.join(get_args(Arch))}, got {arch!r}")
        if rule != "backprop" and net is None:
            # the layers are manual already: the step of convert(net, rule=...) that follows the swap; a convolution's
            # direct feedback matrix is sized by its block's output on an example input
            apply_rule(self.net, rule, example_input=torch.zeros(2, *in_shape))
        if isinstance(dp, Mapping):  # as the hyperparameters hold it
            dp = DifferentialPrivacy(**dp)
        if dp is not None:
            _check_dp(dp, backend)
            check_no_batch_statistics("ClassifierModule(dp=...)", self.net)  # here, not at the first step
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
        ``net`` is saved as its class path and arguments, from which ``load_from_checkpoint`` rebuilds it when
        that class is trusted (``trusted_classes``)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("net"), torch.nn.Module):
            self.save_hyperparameters(ignore=["net"])

    @property  # type: ignore[misc]  # read-only on purpose (Lightning's is settable): made from in_shape, dtype, device
    def example_input_array(self) -> torch.Tensor:
        """Two blank images (2, *in_shape) in the module's dtype and on its device, for Lightning's model
        summary. The trainer's precision plugin casts the module (float64 under ``precision="64-true"``,
        bfloat16 under ``"bf16-true"``) and every batch it feeds (``Precision.convert_input``), but not this
        example: made in the module's dtype, it fits the layers at every precision."""
        # Lightning types dtype as str | torch.dtype (a str only after Module.type("...")): a torch.dtype here
        return torch.zeros(2, *self.hparams["in_shape"], dtype=self.dtype, device=self.device)  # type: ignore[arg-type]

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
        """With ``dp``, the data module's training loader is replaced by a Poisson-sampling one for the fit
        (``DPSGD.poisson_loader``: this rank's share of each step's Poisson batch)."""
        if self._dp is None or stage != "fit":
            return
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, undeclared
        if datamodule is None:
            raise ValueError(
                "ClassifierModule(dp=...): DP-SGD training needs a data module (its training loader is "
                "replaced by a Poisson-sampling one)"
            )
        make_loader = datamodule.train_dataloader
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        datamodule.train_dataloader = lambda: self._dp.poisson_loader(make_loader(), rank, world_size)

    def teardown(self, stage: str) -> None:
        datamodule = None if self._trainer is None else self.trainer.datamodule  # type: ignore[attr-defined]  # as in setup
        if self._dp is not None and stage == "fit" and datamodule is not None:
            vars(datamodule).pop("train_dataloader", None)  # the data module's own loader again

    def on_fit_start(self) -> None:
        if self._dp is None:
            return
        if self.trainer.gradient_clip_val is not None:
            raise ValueError(
                "ClassifierModule(dp=...): DP-SGD clips each sample's gradient (dp.max_grad_norm); "
                "leave --trainer.gradient_clip_val unset"
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "ClassifierModule(dp=...): DP-SGD takes one Poisson batch per optimizer step; "
                "leave --trainer.accumulate_grad_batches at 1"
            )
        if self.trainer.world_size > 1:
            model = self.trainer.strategy.model
            if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
                raise ValueError(
                    f"ClassifierModule(dp=...): DP-SGD on {self.trainer.world_size} processes needs "
                    f"--trainer.strategy=ddp, got {type(self.trainer.strategy).__name__}"
                )
            # DDP's gradient hooks fire before the clipped sums are written (at the end of the backward): no
            # reduction of its own at any step (its no_sync), DPSGD.privatize sums the ranks' clipped sums
            model.require_backward_grad_sync = False

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """With ``dp``, the backward inside ``clip_per_sample``: ``p.grad`` is the sum of the clipped per-sample
        gradients."""
        if self._dp is None:
            return super().backward(loss, *args, **kwargs)
        with self._dp.clip(self.net):
            super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``dp``: the noise, the division by the expected batch size, the sum over the ranks under DDP, and
        one step of the accountant."""
        if self._dp is not None:
            self._dp.privatize(p for p in self.net.parameters() if p.requires_grad)

    def on_train_epoch_end(self) -> None:
        if self._dp is not None:
            self.log("epsilon", self._dp.epsilon(), prog_bar=True, sync_dist=True)  # the same on every rank

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

    def configure_optimizers(self) -> torch.optim.Optimizer | OptimizerLRSchedulerConfig:
        """Adam with lr 1e-3: the default when nothing else chooses (the ``manualbp`` command's ``--optimizer``
        replaces this method, as LightningCLI does). The recurrent archs and vit: Adam under ``OneCycleLR`` with a peak lr
        of 5e-3 over the fit's steps (up from 2e-4 in the first 30%, then down to 2e-8, along cosines), stepped
        every step; a constant lr of 1e-3 when the trainer sets no end to the fit. A fit resumed with another
        ``max_epochs`` follows, from the step it reached, the schedule of a fit that long (``_ResumableOneCycleLR``):
        resumed with more epochs, its lr rises again from the shorter schedule's end."""
        steps = self._trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        if not self._own_recipe or not math.isfinite(steps):
            return optimizer
        schedule = _ResumableOneCycleLR(optimizer, max_lr=5e-3, total_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping as the trainer sets it; the recurrent archs and vit clip the gradient norm to 1 when it
        sets none (an RNN's gradient through many steps can spike)."""
        if gradient_clip_val is None and self._own_recipe and self._dp is None:  # DP-SGD clips per sample
            gradient_clip_val, gradient_clip_algorithm = 1.0, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the state of the random generator of the model's device type, so that a fit resumed from this
        checkpoint draws the same dropout masks as one that never stopped."""
        checkpoint["rng_state"] = {self.device.type: _rng_state(self.device)}
        if self._dp is not None:
            checkpoint["dp_accountant"] = self._dp.state_dict()

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        *,
        trusted_classes: Iterable[str] = (),
        **kwargs: Any,
    ) -> ClassifierModule:
        """Lightning's ``load_from_checkpoint`` (keyword arguments override the saved options: ``net=`` hands a
        network object over again), refusing a checkpoint that names code to run.

        A checkpoint of ``net`` given by class path (``--model.net=mypackage.MyNet`` on the command line) names
        that class; loading it would import its module and run its constructor. That happens only for the classes
        in ``trusted_classes`` (class paths, ``["mypackage.MyNet"]``; a class nested in its arguments must be listed
        too); any other raises ``UntrustedCheckpointError`` (a ValueError) naming them, before anything is imported
        (``manualbp.checkpoints``). The built-in networks (``arch``) name no class. The file is read with
        ``weights_only=True`` (Lightning reads a URL with ``weights_only=False`` unless told); ``weights_only=False``
        trusts the file with any code, its pickles included, and skips the check.
        """

        def opt_in(untrusted: list[tuple[str, str]]) -> str:
            return f"pass trusted_classes={[name for _, name in untrusted]!r} to {cls.__name__}.load_from_checkpoint"

        if weights_only is not False:
            hparams = saved_hyperparameters(checkpoint_path, hparams_file)
            given = {key: value for key, value in hparams.items() if key not in kwargs}  # kwargs replace the saved
            check_trusted(given, {f"{cls.__module__}.{cls.__qualname__}", *trusted_classes}, checkpoint_path, opt_in)
            weights_only = True
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that ``checkpoint`` was made by this network (``CheckpointMismatchError`` naming the option
        that differs, or the first parameter that does not fit, instead of torch's state-dict traceback).

        When a fit resumes from it on the same device type, restore its random generator state; loading the
        weights to test, predict or with ``load_from_checkpoint`` leaves the random generators alone. A resumed fit
        keeps the checkpoint callbacks' best checkpoints so far (``_keep_best_checkpoints``)."""
        path = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(checkpoint, dict(self.hparams), self.state_dict(), path)
        resuming_fit = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if resuming_fit and ("dp_accountant" in checkpoint) != (self._dp is not None):
            # the privacy spent so far would be dropped, or a private run would go on from a non-private one
            raise CheckpointMismatchError(
                f"checkpoint {path} was trained {'with' if self._dp is None else 'without'} DP-SGD and this fit "
                f"{'has no' if self._dp is None else 'has'} --model.dp: resume a fit with the dp options it was "
                "trained with"
            )
        if resuming_fit:
            _keep_best_checkpoints(checkpoint, self.trainer.checkpoint_callbacks)
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


class _ResumableOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """``OneCycleLR`` that a fit resumed with another length can load: it keeps its own length (``total_steps``, the
    resumed fit's) and phases, and takes the steps taken from the saved state, so that the fit follows its own
    schedule from the step it reached (``OneCycleLR`` would take the saved length and raise at its end). When the
    length differs, the lr and momentum of that step are set at once, not one step late."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        resized = state_dict["total_steps"] != self.total_steps
        own = {"total_steps": self.total_steps, "_schedule_phases": self._schedule_phases}
        super().load_state_dict({**state_dict, **own})
        if resized:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # get_lr outside step(): on purpose, for this step
                self._last_lr = self.get_lr()  # sets the momentum too
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr


def _keep_best_checkpoints(checkpoint: dict[str, Any], callbacks: Iterable[pl.Callback]) -> None:
    """Point each checkpoint callback's state saved in ``checkpoint`` at the folder the callback writes to now. A
    resumed fit logs into a new run folder, and Lightning's ``ModelCheckpoint.load_state_dict`` drops the best
    score and the best checkpoints so far (``best_model_score``, ``best_k_models``) when the folder differs: only
    the resumed epochs would compete, and the test after fit would take the best of those. With the state kept,
    the best may stay a file of the earlier run's folder, which Lightning never deletes (it removes no checkpoint
    outside the folder it writes to)."""
    states = checkpoint.get("callbacks") or {}
    for callback in callbacks:
        state = states.get(callback.state_key)
        if state is not None and (dirpath := getattr(callback, "dirpath", None)) is not None:
            state["dirpath"] = dirpath


def _is_lightning_default(callback: pl.Callback) -> bool:
    """Whether ``callback`` is configured as the ``ModelCheckpoint()`` that Lightning adds when none is given."""
    default = ModelCheckpoint()
    settings = ("state_key", "dirpath", "filename", "save_last", "save_top_k", "save_weights_only")
    return type(callback) is ModelCheckpoint and all(getattr(callback, s) == getattr(default, s) for s in settings)


def _own_network(net: torch.nn.Module, backend: Backend, rule: RuleName, in_shape: Sequence[int]) -> torch.nn.Module:
    """``net`` as it is (autograd) or converted to manual layers under its learning rule, printing which layers
    became manual (with the rules they learn by, unless all are backprop) and which stayed torch.nn, one line each.

    A layer that is manual already keeps its rule and ``feedback_weight`` buffer (``manualbp.convert(net,
    rule="feedback_alignment")`` done by the user): ``rule="backprop"``, the default, adds nothing. Another
    ``rule`` is given to a network whose layers carry none (as to a built-in arch), and refused with a
    ``ValueError`` when they carry another one: replacing the user's rule, or training under two, would not be
    what either argument asked for."""
    if backend == "autograd":
        return net
    layers(backend)  # validates the name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # convert's warning lists every layer; the summary counts them
        net = convert(net, rule=None)  # the layers that are manual already keep their rule
    rules = _rules(net)
    carried = set(rules) - {"backprop"}
    if rule != "backprop" and carried - {rule}:
        raise ValueError(
            f"ClassifierModule: net learns by {', '.join(sorted(carried))} already (manualbp.convert(net, rule=...)), "
            f"but rule={rule!r}: give the rule once (rule='backprop', the default, keeps the net's)"
        )
    if rule != "backprop" and not carried:
        apply_rule(net, rule, example_input=torch.zeros(2, *in_shape))
        rules = _rules(net)
    summary = layer_summary(net)
    learning = (
        ""
        if set(rules) <= {"backprop"}
        else (
            f"; learning rule{'s' * (len(rules) > 1)} "
            + ", ".join(f"{name} ({_counted(counts)})" for name, counts in rules.items())
        )
    )
    if summary["manual"]:
        _print_rank_zero(f"ClassifierModule: manual (hand-written backward): {_counted(summary['manual'])}{learning}")
    if summary["torch"]:
        _print_rank_zero(f"ClassifierModule: stayed torch.nn (autograd backward): {_counted(summary['torch'])}")
    return net


def _rules(net: torch.nn.Module) -> dict[str, Counter[str]]:
    """The learning rules of ``net``'s layers that take one (Linear, LinearReLU, Conv2d), by name, each with how many
    layers of each type learn by it; a layer without a rule counts under ``backprop``."""
    rules: dict[str, Counter[str]] = {}
    for _, layer in rule_layers(net):
        rule = getattr(layer, "rule", None)
        name = "backprop" if rule is None else rule.name
        rules.setdefault(name, Counter())[type(layer).__name__] += 1
    return rules


def _counted(counts: Counter[str]) -> str:
    """``1 Conv2d, 2 Linear``: how many layers of each type."""
    return ", ".join(f"{n} {name}" for name, n in counts.items())


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
