"""The row-by-row recurrent classifiers (``arch=rnn|lstm|gru``): both backends build the same network with the
same weights, train alike, and the ``manualbp`` command trains them."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.testing import assert_close

from manualbp.cli import command, main
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.models import ImageRows, LastHidden, LastStatesFunction, _last_states, recurrent
from manualbp.nn import ManualModule
from tests.test_models import _walk


def _pair(cell: str, in_shape: tuple[int, int, int], **options) -> dict[str, torch.nn.Module]:
    models = {}
    for backend in ("manual", "autograd"):
        torch.manual_seed(0)
        models[backend] = recurrent(cell, in_shape=in_shape, backend=backend, **options)
    return models


@pytest.mark.parametrize(
    "cell, options, in_shape",
    [
        ("rnn", dict(hidden_size=12), (1, 8, 8)),
        ("lstm", dict(hidden_size=12, num_layers=2), (1, 8, 8)),
        ("gru", dict(hidden_size=12, bidirectional=True), (1, 8, 8)),
        ("lstm", dict(hidden_size=6, num_layers=2, bidirectional=True), (3, 5, 4)),
    ],
    ids=["rnn-digits", "lstm-2layers", "gru-bidirectional", "lstm-2layers-bidirectional-3channels"],
)
def test_backends_share_names_weights_outputs_and_gradients(cell, options, in_shape):
    models = _pair(cell, in_shape, **options)
    manual, reference = models["manual"], models["autograd"]
    assert list(manual.state_dict()) == list(reference.state_dict())
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)
    assert isinstance(manual.get_submodule(cell), ManualModule)
    assert not any(isinstance(m, ManualModule) for m in reference.modules())

    x = torch.randn(3, *in_shape)
    out, ref = manual(x), reference(x)
    assert out.shape == (3, 10)
    assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(manual.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, msg=name)
    native = {type(n).__name__ for n in _walk(out.grad_fn)} - {"AccumulateGrad"}
    assert all(name.endswith("FunctionBackward") for name in native), native


def test_the_sequence_is_the_image_row_by_row():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = ImageRows()(images)
    assert rows.shape == (2, 4, 15)  # H steps of C·W features
    assert torch.equal(rows[:, 1], images[:, :, 1, :].flatten(1))  # step 1: row 1 of each channel, side by side
    assert recurrent("gru", 7, in_shape=(3, 4, 5), backend="autograd").gru.input_size == 15


@pytest.mark.parametrize("manual", [False, True], ids=["autograd", "manual"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_last_hidden_is_the_last_layers_final_state_of_each_direction(num_layers, manual):
    lstm = torch.nn.LSTM(5, 4, num_layers, batch_first=True, bidirectional=True)
    output, state = lstm(torch.randn(2, 6, 5))
    last = LastHidden(2, manual)((output, state))
    # the forward direction ends at the last step, the reverse one at the first
    assert_close(last, torch.cat([output[:, -1, :4], output[:, 0, 4:]], dim=1))
    gru = torch.nn.GRU(5, 4, num_layers, batch_first=True)
    output, h_n = gru(torch.randn(2, 6, 5))
    assert_close(LastHidden(1, manual)((output, h_n)), output[:, -1])


def test_last_states_function_passes_the_verify_battery(verify_function):
    samples = [(torch.randn(6, 3, 4), 2), (torch.randn(3, 1, 1), 1)]  # 3 layers bidirectional; 3 layers, N = H = 1
    verify_function(LastStatesFunction.call, _last_states, samples)


def test_manual_and_autograd_training_steps_agree():
    """Five Adam steps of ClassifierModule(arch=lstm) on one tiny batch: the same loss on both backends
    within float rounding, step by step."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    losses = {}
    for backend in ("manual", "autograd"):
        torch.manual_seed(0)
        module = ClassifierModule(arch="lstm", backend=backend, hidden_size=16, in_shape=(1, 8, 8))
        optimizer = module.configure_optimizers()
        losses[backend] = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = module.loss_fn(module(x), y)
            loss.backward()
            optimizer.step()
            losses[backend].append(loss.detach())
    assert_close(torch.stack(losses["manual"]), torch.stack(losses["autograd"]), rtol=1e-5, atol=1e-6)
    assert losses["manual"][-1] < losses["manual"][0]  # it learns


class _StepRecord(pl.Callback):
    """Each step's lr, and its gradient norm before Lightning clips it and after (the optimizer steps on the latter)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.before: list[float] = []
        self.after: list[float] = []

    @staticmethod
    def _norm(module: pl.LightningModule) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.before.append(self._norm(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(self._norm(pl_module))


@pytest.mark.parametrize("arch", ["gru", "mlp"])
def test_recurrent_training_defaults_one_cycle_lr_and_clipping(arch):
    """The recurrent archs: Adam under OneCycleLR (peak 5e-3) over the fit's steps, gradient norm clipped to 1;
    the others keep a constant lr of 1e-3 and unclipped gradients."""
    torch.manual_seed(0)
    model = ClassifierModule(arch=arch, hidden=(16,), hidden_size=16, in_shape=(1, 8, 8))
    with torch.no_grad():  # larger weights, larger gradients: clipping has work to do
        for p in model.parameters():
            p.mul_(3)
    record = _StepRecord()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    recurrent = arch == "gru"
    reference = torch.optim.SGD([torch.zeros(1)], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=5e-3, total_steps=6) if recurrent else None
    expected_lrs = []
    for _ in range(6):
        expected_lrs.append(reference.param_groups[0]["lr"])
        if schedule is not None:
            reference.step()
            schedule.step()
    assert record.lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert max(record.before) > 1.0
    expected_norms = [min(n, 1.0) for n in record.before] if recurrent else record.before
    assert record.after == pytest.approx(expected_norms, rel=1e-5)


def test_fast_dev_run_of_lstm_through_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--model.arch=lstm", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])
    assert "test_acc = " in capsys.readouterr().out


def test_the_recurrent_options_reach_the_network():
    options = ["--model.arch=gru", "--model.hidden_size=8", "--model.num_layers=2", "--model.bidirectional=true"]
    cli = command(options, run=False)
    gru = cli.model.net.gru
    assert isinstance(gru, ManualModule) and isinstance(gru, torch.nn.GRU)
    assert (gru.input_size, gru.hidden_size, gru.num_layers, gru.bidirectional) == (8, 8, 2, True)
    assert cli.model.net.out.in_features == 16
    assert cli.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_bad_arch_and_sizes_are_clear_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="arch must be one of mlp, lenet5, rnn, lstm, gru, vit, got 'transformer'"):
        ClassifierModule(arch="transformer")
    with pytest.raises(ValueError, match="recurrent: cell must be one of"):
        recurrent("lstmm")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.arch=transformer"])
    assert exit_info.value.code == 2
    assert (
        "manualbp: error: --model.arch=transformer is not one of mlp, lenet5, rnn, lstm, gru" in capsys.readouterr().err
    )
    assert main(["fit", "--model.arch=lstm", "--model.hidden_size=0"]) == 2
    assert "manualbp: error: recurrent: hidden_size must be at least 1, got 0" in capsys.readouterr().err


def test_the_command_leaves_a_recurrent_arch_its_own_recipe_unless_told_otherwise():
    """No --optimizer values and no --lr_scheduler: the lstm trains with ClassifierModule's one-cycle recipe; any
    optimizer value given, or another arch, and the command's optimizer is used."""
    own = command(["--model.arch=lstm"], run=False)
    assert own.config.optimizer is None
    assert own.model.configure_optimizers.__func__ is ClassifierModule.configure_optimizers
    for options in (["--model.arch=lstm", "--optimizer.lr=0.01"], ["--model.arch=mlp"]):
        chosen = command(options, run=False)
        assert chosen.config.optimizer.init_args.lr == (0.01 if "--optimizer.lr=0.01" in options else 1e-3)
        assert chosen.model.configure_optimizers.__func__ is not ClassifierModule.configure_optimizers


def test_checkpoint_checks_compare_the_recurrent_options_of_recurrent_archs_only():
    from manualbp.checkpoints import _differing_options

    gru = {
        "arch": "gru",
        "hidden": [800],
        "activation": "relu",
        "hidden_size": 8,
        "num_layers": 1,
        "bidirectional": False,
    }
    assert _differing_options(gru, {**gru, "hidden_size": 16, "activation": "tanh", "hidden": [5]}) == ["hidden_size"]
    assert _differing_options(gru, {**gru, "num_layers": 2, "bidirectional": True}) == ["num_layers", "bidirectional"]
    mlp = {**gru, "arch": "mlp"}
    assert _differing_options(mlp, {**mlp, "hidden_size": 16, "activation": "tanh"}) == ["activation"]
