"""manualbp.viz and LearningAnimation: the GIF of backprop on one digit, the static figures, the experiment scripts."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.text import Text
from PIL import Image
from pytorch_lightning.loggers import CSVLogger

from manualbp.callbacks import LearningAnimation
from manualbp.cli import main
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.viz import as_grid, plot_alignment, plot_gradient_flow, plot_learning_curves, save_learning_animation

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _n_frames(path: Path) -> int:
    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames


def _fit(
    callback: LearningAnimation, arch: str = "mlp", max_steps: int = 10, backend: str = "manual", **trainer_args
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=32)
    model = ClassifierModule(arch=arch, backend=backend, hidden=(16,), hidden_size=16, in_shape=data.in_shape)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-2)
    model.configure_callbacks = list
    trainer = pl.Trainer(
        **{
            "max_steps": max_steps,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "callbacks": [callback],
            **trainer_args,
        }
    )
    trainer.fit(model, datamodule=data)
    return trainer


def test_animation_callback_writes_one_frame_per_step(tmp_path):
    path = tmp_path / "learning.gif"
    animation = LearningAnimation(path=str(path), every_n_steps=1, fps=10, dpi=40)
    trainer = _fit(animation)
    assert trainer.global_step == 10
    assert _n_frames(path) == 11  # before the first step, then after each of the 10
    assert [f["step"] for f in animation.frames] == list(range(11))

    first, last = animation.frames[0], animation.frames[-1]
    data = DigitsDataModule(batch_size=32)
    data.setup("fit")
    images, labels = data.train_set.tensors
    assert int(labels[animation.example_index]) == 5
    assert (labels[: animation.example_index] != 5).all()  # the first 5 of the training set
    np.testing.assert_array_equal(first["image"], images[animation.example_index].numpy())
    assert first["layers"] == ["fc1", "out"]  # the manual mlp's fc1 is a fused Linear+ReLU
    assert first["updates"] == {} and set(last["updates"]) == {"fc1", "out"}
    assert all(v > 0 for v in last["updates"].values())
    assert last["loss"] < first["loss"]  # lr 1e-2: the digit is learned a little in 10 steps
    assert first["errors"][-1].shape == (10,) and first["input_grad"].shape == (1, 8, 8)


def test_animation_does_not_change_training(tmp_path):
    """The digit's forward/backward leaves .grad, the weights and the mode alone: same weights as without it."""
    trainer = _fit(LearningAnimation(path=str(tmp_path / "a.gif"), every_n_steps=1, dpi=30), max_steps=4)
    with_animation = [p.detach().clone() for p in trainer.lightning_module.parameters()]
    trainer = _fit(pl.Callback(), max_steps=4)
    for a, b in zip(with_animation, trainer.lightning_module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_animation_prints_the_path_it_wrote(tmp_path, capsys):
    path = tmp_path / "learning.gif"
    _fit(LearningAnimation(path=str(path), every_n_steps=1, dpi=30), max_steps=2)
    assert capsys.readouterr().out.splitlines()[-1] == f"LearningAnimation: wrote {path}"
    assert _n_frames(path) == 3


def test_a_relative_path_goes_into_the_run_folder(tmp_path, monkeypatch, capsys):
    """Each run's GIF lands in its own lightning_logs/version_N/, not in the current directory."""
    monkeypatch.chdir(tmp_path)
    for version in (0, 1):
        _fit(LearningAnimation(every_n_steps=1, dpi=30), max_steps=1, logger=CSVLogger(tmp_path / "runs"))
        gif = tmp_path / "runs" / "lightning_logs" / f"version_{version}" / "learning.gif"
        assert capsys.readouterr().out.splitlines()[-1] == f"LearningAnimation: wrote {gif}"
        assert _n_frames(gif) == 2
    _fit(LearningAnimation(path="films/five.gif", every_n_steps=1, dpi=30), max_steps=1, logger=CSVLogger(tmp_path))
    assert _n_frames(tmp_path / "lightning_logs" / "version_0" / "films" / "five.gif") == 2
    assert not list(tmp_path.glob("*.gif"))


def test_without_a_logger_a_relative_path_goes_into_default_root_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fit(LearningAnimation(every_n_steps=1, dpi=30), max_steps=1, default_root_dir=tmp_path / "root")
    gif = tmp_path / "root" / "learning.gif"
    assert capsys.readouterr().out.splitlines()[-1] == f"LearningAnimation: wrote {gif}"
    assert _n_frames(gif) == 2 and not (tmp_path / "learning.gif").exists()


def test_through_the_command_line_into_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "fit",
            "--trainer.callbacks+=LearningAnimation",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.callbacks.dpi=30",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--model.hidden=[16]",
            "--test_after_fit=false",
            f"--trainer.default_root_dir={tmp_path / 'root'}",
        ]
    )
    assert status == 0
    gif = tmp_path / "root" / "lightning_logs" / "version_0" / "learning.gif"
    assert re.search(rf"^LearningAnimation: wrote {re.escape(str(gif))}$", capsys.readouterr().out, re.M)
    assert _n_frames(gif) == 3 and not (tmp_path / "learning.gif").exists()


@pytest.fixture
def drawn_texts(monkeypatch):
    """The texts of the last figure drawn: (string, extent in pixels, font size in pixels, figure extent), as the
    renderer draws them (tick labels outside the view and invisible texts are not drawn, so not listed)."""
    from matplotlib.figure import Figure

    texts: list[tuple[str, object, float, object]] = []
    draw_text, draw_figure = Text.draw, Figure.draw

    def record_text(self, renderer):
        draw_text(self, renderer)
        if self.get_visible() and self.get_text().strip():
            size = renderer.points_to_pixels(self.get_fontsize())
            texts.append((self.get_text(), self.get_window_extent(renderer), size, self.figure.get_window_extent()))

    def record_figure(self, renderer):
        texts.clear()  # a new frame
        draw_figure(self, renderer)

    monkeypatch.setattr(Text, "draw", record_text)
    monkeypatch.setattr(Figure, "draw", record_figure)
    return texts


@pytest.mark.parametrize(
    "arch, backend", [("mlp", "manual"), ("lenet5", "manual"), ("lenet5", "autograd"), ("lstm", "manual")]
)
def test_the_gif_text_is_readable_at_its_default_size(tmp_path, drawn_texts, arch, backend):
    """Every text of a frame, as the GIF is written with the callback's defaults, is at least 12 px tall, lies
    inside the frame and overlaps no other text (LeNet-5's layer labels "conv1 (6×8×8)" and "pool1 (6×4×4)" did)."""
    path = tmp_path / "learning.gif"
    animation = LearningAnimation(path=str(path), every_n_steps=1)
    _fit(animation, arch=arch, backend=backend, max_steps=1)
    assert _n_frames(path) == 2
    labels = [text for text, *_ in drawn_texts]
    assert all(any(label.startswith(name) for label in labels) for name in animation.frames[0]["layers"]), labels
    for text, extent, size, frame in drawn_texts:
        assert size >= 12, f"{text!r} is {size:.1f} px"
        assert frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and frame.y0 <= extent.y0 and extent.y1 <= frame.y1, text
    for i, (a, box_a, *_) in enumerate(drawn_texts):
        for b, box_b, *_ in drawn_texts[i + 1 :]:
            overlap_x = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            overlap_y = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            assert overlap_x <= 1 or overlap_y <= 1, f"{a!r} overlaps {b!r}"


def test_animation_thins_frames_and_films_lenet5_from_the_validation_set(tmp_path):
    path = tmp_path / "lenet.gif"
    animation = LearningAnimation(path=str(path), every_n_steps=1, max_frames=4, split="val", digit=3, dpi=30)
    _fit(animation, arch="lenet5", max_steps=6)
    assert len(animation.frames) == 7
    assert _n_frames(path) == 4
    assert animation.frames[0]["activations"][0].shape == (6, 8, 8)  # conv1, one example


def test_animation_picks_every_n_steps_from_the_run_length(tmp_path):
    animation = LearningAnimation(path=str(tmp_path / "auto.gif"), max_frames=5, dpi=30)
    _fit(animation, max_steps=12)
    assert [f["step"] for f in animation.frames] == [0, 3, 6, 9, 12]


def test_animation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        LearningAnimation(every_n_steps=0)
    with pytest.raises(ValueError, match="split"):
        LearningAnimation(split="test")


def test_as_grid_shapes():
    assert as_grid(np.arange(10.0)).shape == (1, 10)
    assert as_grid(np.arange(64.0)).shape == (8, 8)
    assert as_grid(np.ones((6, 4, 4))).shape == (2 * 5 - 1, 3 * 5 - 1)
    grid = as_grid(np.arange(20.0))  # 4 x 5, row-major
    assert grid.shape == (4, 5) and grid[1, 0] == 5
    assert np.isnan(as_grid(np.arange(18.0))).sum() == 2  # 4 x 5 with two empty cells


def test_figure_functions_write_pngs(tmp_path):
    steps = list(range(1, 21))
    run = dict(step=steps, train_loss=[2.3 / s for s in steps], epoch=[1, 2], val_acc=[0.8, 0.9])
    plot_learning_curves({"manual": run, "autograd": run}, tmp_path / "curves.png")
    plot_gradient_flow(steps, {"fc1": [1.0 / s for s in steps], "out": [2.0 / s for s in steps]}, tmp_path / "flow.png")
    angles = {"fc1.weight": [90.0 - s for s in steps], "out.weight": [0.0] * len(steps)}
    fig = plot_alignment(steps, angles, tmp_path / "alignment.png")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fc1.weight", "out.weight", "90°: orthogonal"]
    assert ax.get_ylim() == (-3.0, 100.0)
    for name in ("curves.png", "flow.png", "alignment.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 300

    frame = dict(
        step=0,
        label=5,
        image=np.zeros((1, 8, 8)),
        layers=["fc1", "out"],
        activations=[np.ones(16), np.ones(10)],
        errors=[np.ones(16), None],
        probs=np.full(10, 0.1),
        loss=2.3,
        updates={},
    )
    save_learning_animation([frame, dict(frame, step=1, updates={"fc1": 0.1, "out": 0.01})], tmp_path / "a.gif", dpi=30)
    assert _n_frames(tmp_path / "a.gif") == 2


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # as when run as a script: its folder on sys.path (_common)
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_animate_learning_script_runs_small(tmp_path, monkeypatch):
    out = tmp_path / "learning.gif"
    _load("animate_learning", monkeypatch).main(["--steps", "6", "--every", "2", "--hidden", "16", "--out", str(out)])
    assert _n_frames(out) == 4


def test_figures_script_runs_small(tmp_path, monkeypatch):
    argv = ["--epochs", "1", "--steps", "4", "--hidden", "16", "--out", str(tmp_path)]
    paths = _load("figures", monkeypatch).main(argv)
    for path in paths.values():
        assert path.exists() and path.parent == tmp_path
