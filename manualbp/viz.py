"""Plots and animations of backpropagation (matplotlib).

Every function here takes plain arrays (numpy arrays, or CPU tensors, which are converted) and draws on
a ``matplotlib.figure.Figure``; nothing here trains or hooks a model (``manualbp.trace`` records,
``manualbp.callbacks.LearningAnimation`` and ``experiments/`` drive). Figures are built without pyplot, so
no GUI backend is needed.

* ``draw_learning_frame(fig, frame)``: one frame of the learning animation, the four steps of
  backpropagation as labelled panels: 1. forward pass (input and each layer's activation y_l), 2. loss
  (output probabilities with the right class marked, the training loss so far), 3. backward pass (each
  layer's error signal δ_l = ∂L/∂y_l, and ∂L/∂x on the input), 4. weight update (‖ΔW_l‖ per layer).
* ``save_learning_animation(frames, path)``: those frames as a GIF (matplotlib's ``PillowWriter``), 100 dpi,
  ``frame_figsize`` wide: every label has room and is at least 12.5 px tall.
* ``plot_learning_curves(runs, path)``: training loss per step and validation accuracy per epoch, one line per run.
* ``plot_gradient_flow(steps, norms, path)``: per-layer gradient norm over training, log scale.
* ``plot_alignment(steps, angles, path)``: per-layer angle between a learning rule's update and the true gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.animation import PillowWriter
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, MultipleLocator, NullFormatter

__all__ = [
    "FRAME_DPI",
    "FRAME_FONT",
    "as_grid",
    "draw_learning_frame",
    "frame_figsize",
    "frame_limits",
    "new_figure",
    "plot_alignment",
    "plot_gradient_flow",
    "plot_learning_curves",
    "save_learning_animation",
]

TRUE_COLOR = "#2ca02c"
OTHER_COLOR = "#9aa5b1"
STEP_COLORS = ("#e8f1fb", "#fdf1e3", "#fbe9ea", "#eaf6ec")  # forward, loss, backward, update
#: Font size of the learning frame's labels in points, the smallest text in it (panel titles 1.5 pt larger, the
#: headline 3): 12.5 px at ``FRAME_DPI``.
FRAME_FONT = 9.0
#: Resolution of the learning animation (dots per inch).
FRAME_DPI = 100.0
_ROW = dict(left=0.02, right=0.98, wspace=0.35)  # the layer rows (forward, backward): one cell per map
_LOSS_WIDTH = 3.9  # inches, the loss and update panels on the right
_FRAME_HEIGHT = 5.6  # inches


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def new_figure(figsize: tuple[float, float] = (6.4, 4.8), dpi: float = 100) -> Figure:
    """A Figure on the Agg canvas (no pyplot, no GUI)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def as_grid(values: Any) -> np.ndarray:
    """A 2-D picture of one example's layer output: an image as is, channels (C, H, W) tiled in a grid with
    one-pixel NaN gaps, a vector of n values folded into a near-square grid (row-major, NaN padding) — or
    kept as one row when short (n <= 16, e.g. logits)."""
    a = _np(values)
    a = a.reshape(a.shape[-2:]) if a.ndim > 2 and math.prod(a.shape[:-2]) == 1 else a
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        n = a.size
        if n <= 16:
            return a.reshape(1, n)
        rows = math.floor(math.sqrt(n))
        cols = math.ceil(n / rows)
        out = np.full(rows * cols, np.nan)
        out[:n] = a
        return out.reshape(rows, cols)
    if a.ndim == 2:
        return a
    channels = a.reshape(-1, *a.shape[-2:])
    c, h, w = channels.shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i in range(c):
        r, q = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = channels[i]
    return out


def _heatmap(ax: Axes, values: Any, limit: float | None, diverging: bool, cmap: str | None = None) -> np.ndarray:
    """Draw one layer's values; ``limit`` the colour range (max |value|, None: this map's own). A map more than
    four times wider than tall (a sequence of hidden states, time × features) fills its cell instead of
    shrinking to a strip."""
    grid = as_grid(values)
    finite = grid[np.isfinite(grid)]
    if limit is None or not limit > 0:
        limit = float(np.abs(finite).max()) if finite.size else 1.0
        limit = limit if limit > 0 else 1.0
    vmin = -limit if diverging else min(0.0, float(finite.min()) if finite.size else 0.0)
    rows, cols = grid.shape
    wide = rows > 1 and cols > 4 * rows
    ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap or ("RdBu_r" if diverging else "viridis"),
        vmin=vmin,
        vmax=limit,
        interpolation="nearest",
        aspect=2.5 if rows == 1 else "auto" if wide else "equal",
    )
    if wide:
        ax.set_box_aspect(0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    return grid


def _class_ticks(ax: Axes, grid: np.ndarray, label: int) -> None:
    """Mark the true class on a one-row map (logits, class scores): its cell framed, its number under it."""
    if grid.shape[0] != 1 or grid.shape[1] > 16 or not 0 <= label < grid.shape[1]:
        return
    ax.set_xticks([label], [str(label)], fontsize=FRAME_FONT, color=TRUE_COLOR, fontweight="bold")
    ax.tick_params(length=0, pad=1)
    ax.add_patch(Rectangle((label - 0.5, -0.5), 1, 1, fill=False, ec=TRUE_COLOR, lw=1.5))


def _panel(parent: SubFigure, title: str, color: str) -> SubFigure:
    parent.set_facecolor(color)
    parent.suptitle(title, fontsize=FRAME_FONT + 1.5, fontweight="bold", x=0.01, ha="left", y=0.98, va="top")
    return parent


def _shape(values: Any) -> str:
    return "×".join(str(s) for s in _np(values).shape)


def _text_width(text: str, size: float = FRAME_FONT) -> float:
    """The width of the widest line of ``text`` at ``size`` points, in inches."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size)
    widths = [text_to_path.get_text_width_height_descent(line, prop, ismath=False)[0] for line in text.split("\n")]
    return max(widths) / 72


def frame_figsize(frame: Mapping[str, Any]) -> tuple[float, float]:
    """The figure size (inches) of ``frame``'s animation: the forward and backward rows get one cell per map,
    each as wide as its widest label (at least 0.8 in), so layer labels never run into each other however many
    layers the network has (the rows at least 6.4 in); the loss and update panels keep 3.9 in."""
    labels = ["input x", "∂L/∂x", "±8.8e-88"]  # the last: the widest scale printed under an error map
    labels += [f"{name}\n{_shape(act)}" for name, act in zip(frame["layers"], frame["activations"])]
    labels += [f"δ {name}" for name in frame["layers"]]
    cell = max(0.8, max(map(_text_width, labels)) + 0.15)  # + the gap's arrow
    span = _ROW["right"] - _ROW["left"]
    row = max(6.4, cell * (len(frame["layers"]) + 1) / span)
    return (round(row + _LOSS_WIDTH, 2), _FRAME_HEIGHT)


def _layer_row(panel: SubFigure, n: int, arrow: str, top: float, bottom: float) -> np.ndarray:
    """``n`` cells in a row across ``panel`` between heights ``bottom`` and ``top``, with ``arrow`` (the direction
    of the pass) in the middle of each gap."""
    axes = panel.subplots(1, n, gridspec_kw=dict(_ROW, top=top, bottom=bottom))
    width = (_ROW["right"] - _ROW["left"]) / (n + (n - 1) * _ROW["wspace"])
    for i in range(1, n):
        x = _ROW["left"] + i * width * (1 + _ROW["wspace"]) - width * _ROW["wspace"] / 2
        panel.text(
            x,
            (top + bottom) / 2,
            arrow,
            fontsize=FRAME_FONT + 3,
            ha="center",
            va="center",
            transform=panel.transSubfigure,
        )
    return axes


def _loss_ticks(ax: Axes) -> None:
    """1-2-5 ticks on the log loss axis; over less than a decade, three or four round values instead."""
    low, high = ax.get_ylim()
    if high < 10 * low:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]))
    else:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def draw_learning_frame(fig: Figure, frame: Mapping[str, Any], limits: Mapping[str, Any] | None = None) -> None:
    """Draw one frame of the learning animation on ``fig`` (cleared first).

    ``frame`` keys: ``step`` (optimizer steps done), ``image`` (H, W) or (C, H, W), ``label`` (the true class),
    ``layers`` (names, in forward order), ``activations`` and ``errors`` (one array per layer: that layer's
    output y_l and error δ_l = ∂L/∂y_l for the one example; an error may be None), ``input_grad`` (∂L/∂x,
    optional), ``probs`` (class probabilities), ``loss`` (the example's loss), ``loss_steps`` / ``loss_values``
    (the training loss so far), ``updates`` (parametrised layer -> ‖ΔW‖, the size of its last weight
    update), optional ``epoch``, ``max_step`` (x range of the loss curve), ``update_note`` (what ΔW is).

    ``limits`` (optional, computed over all frames by ``frame_limits`` so that colours and axes mean the same
    in every frame): ``activations`` (layer -> (min, max)), ``loss`` ((low, high)), ``updates`` ((low, high)).
    Activations that are never negative use viridis from 0, signed ones a diverging map (purple < 0 < orange);
    errors use blue < 0 < red, scaled per frame (symmetric about 0, the scale printed under each map), since
    they shrink by orders of magnitude as the example is learned.

    Drawn on a figure of ``frame_figsize(frame)`` at ``FRAME_DPI`` (as ``save_learning_animation`` does), every
    text is at least ``FRAME_FONT`` points (12.5 px) and no two texts overlap; the loss and update panels are
    3.9 in wide whatever the figure's width.
    """
    limits = limits or {}
    fig.clear()
    layers = list(frame["layers"])
    label = int(frame["label"])
    probs = _np(frame["probs"]).ravel()
    loss = float(frame["loss"])
    step = int(frame["step"])
    epoch = frame.get("epoch")
    head = f"optimizer step {step}" + (f", epoch {int(epoch)}" if epoch is not None else "")
    # matplotlib types subfigures() as SubFigure | ndarray, whatever the grid: a (2,) array of SubFigures here
    top, body = fig.subfigures(2, 1, height_ratios=[0.075, 0.925])  # type: ignore[misc]
    top.text(
        0.5,
        0.45,
        f"Backpropagation on one digit {label} while the network learns  —  {head}",
        ha="center",
        va="center",
        fontsize=FRAME_FONT + 3,
    )
    right = min(_LOSS_WIDTH, fig.get_figwidth() / 2)
    (fwd, lp), (bwd, up) = body.subfigures(
        2, 2, width_ratios=[fig.get_figwidth() - right, right], wspace=0.0, hspace=0.0
    )
    n = len(layers) + 1
    act_limits = limits.get("activations", {})
    small = dict(fontsize=FRAME_FONT)

    # 1. forward pass
    _panel(fwd, "1. Forward pass: activations y_l = f_l(y_l−1)", STEP_COLORS[0])
    axes = _layer_row(fwd, n, "→", top=0.7, bottom=0.1)
    image = _np(frame["image"])
    _heatmap(axes[0], image.reshape(-1, *image.shape[-2:]).mean(0), None, False, cmap="gray_r")
    axes[0].set_title(f"input x\n{_shape(image)}", **small)
    for ax, name, act in zip(axes[1:], layers, frame["activations"]):
        low, high = act_limits.get(name, (None, None))
        signed = low is not None and low < 0
        grid = _heatmap(
            ax, act, max(abs(low), high) if signed else high, diverging=signed, cmap="PuOr_r" if signed else None
        )
        _class_ticks(ax, grid, label)
        ax.set_title(f"{name}\n{_shape(act)}", **small)

    # 2. loss
    _panel(lp, f"2. Loss: L = −log p({label}) = {loss:.3g}", STEP_COLORS[1])
    ax_p, ax_l = lp.subplots(1, 2, gridspec_kw=dict(left=0.12, right=0.93, top=0.7, bottom=0.2, wspace=0.5))
    colors = [TRUE_COLOR if k == label else OTHER_COLOR for k in range(len(probs))]
    ax_p.bar(range(len(probs)), probs, color=colors, width=0.8)
    ax_p.set_ylim(0, 1)
    ax_p.set_yticks([0, 0.5, 1], ["0", ".5", "1"])
    ax_p.set_xticks(range(len(probs)), [str(k) if k in (0, label, len(probs) - 1) else "" for k in range(len(probs))])
    ax_p.tick_params(labelsize=FRAME_FONT, length=2, pad=1)
    p_true = probs[label] if label < len(probs) else float("nan")
    ax_p.set_title(f"softmax\np({label}) = {p_true:.2f}", **small)
    ax_p.set_xlabel("class", labelpad=1, **small)
    steps, values = _np(frame.get("loss_steps", [])), _np(frame.get("loss_values", []))
    if steps.size:
        ax_l.plot(steps, values, lw=0.8, color="#d62728")
        ax_l.plot(steps[-1:], values[-1:], "o", ms=3, color="#d62728")
    ax_l.set_yscale("log")
    if "loss" in limits:
        ax_l.set_ylim(*limits["loss"])
    _loss_ticks(ax_l)
    ax_l.set_xlim(0, max(int(frame.get("max_step", step)), 1))
    ax_l.xaxis.set_major_locator(MaxNLocator(nbins=2, integer=True))
    ax_l.tick_params(labelsize=FRAME_FONT, length=2, pad=1)
    ax_l.set_title("training loss\nso far", **small)
    ax_l.set_xlabel("step", labelpad=1, **small)

    # 3. backward pass
    _panel(bwd, "3. Backward pass: error signals δ_l = ∂L/∂y_l, right to left", STEP_COLORS[2])
    axes = _layer_row(bwd, n, "←", top=0.76, bottom=0.16)
    grad_x = frame.get("input_grad")
    entries = [("∂L/∂x", None if grad_x is None else _np(grad_x).reshape(-1, *_np(grad_x).shape[-2:]).sum(0))]
    entries += [(f"δ {name}", err) for name, err in zip(layers, frame["errors"])]
    for ax, (title, err) in zip(axes, entries):
        ax.set_title(title, **small)
        if err is None:
            ax.axis("off")
            ax.set_box_aspect(1)  # a square cell, its title level with its neighbours'
            ax.text(0.5, 0.5, "no grad", ha="center", va="center", transform=ax.transAxes, **small)
            continue
        grid = _heatmap(ax, err, None, diverging=True)
        _class_ticks(ax, grid, label)
        ax.set_xlabel(f"±{np.abs(_np(err)).max():.1e}", labelpad=2, **small)

    # 4. weight update
    _panel(up, "4. Weight update: W ← W + ΔW", STEP_COLORS[3])
    updates = {k: float(v) for k, v in dict(frame.get("updates", {})).items()}
    names = list(updates)
    margin = (max(map(_text_width, names), default=0.0) + 0.15) / right
    ax_u = up.subplots(1, 1, gridspec_kw=dict(left=max(0.12, margin), right=0.95, top=0.76, bottom=0.3))
    if names:
        sizes = [max(updates[k], 1e-12) for k in names]
        ax_u.barh(range(len(names)), sizes, color="#1f77b4", height=0.6)
        ax_u.set_yticks(range(len(names)), names)
        ax_u.invert_yaxis()
        ax_u.set_xscale("log")
        if "updates" in limits:
            ax_u.set_xlim(*limits["updates"])
        ax_u.xaxis.set_major_locator(LogLocator(numticks=4))
        ax_u.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
        ax_u.xaxis.set_minor_formatter(NullFormatter())
        low, high = np.log10(ax_u.get_xlim())
        for i, size in enumerate(sizes):  # the value after a short bar, inside a long one
            inside = (np.log10(size) - low) / (high - low) > 0.55
            ax_u.text(
                size,
                i,
                f" {size:.1e} ",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                **small,
            )
    else:
        ax_u.set_yticks([])
        ax_u.set_xticks([])
        ax_u.text(0.5, 0.5, "(before the first step)", ha="center", va="center", transform=ax_u.transAxes, **small)
    ax_u.tick_params(labelsize=FRAME_FONT, length=2, pad=1)
    ax_u.set_xlabel(frame.get("update_note", "‖ΔW_l‖ per layer"), labelpad=1, **small)


def frame_limits(frames: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Colour and axis ranges shared by all frames: (min, max) activation per layer, the loss and update ranges."""
    acts: dict[str, tuple[float, float]] = {}
    for frame in frames:
        for name, act in zip(frame["layers"], frame["activations"]):
            a = _np(act)
            if a.size:
                low, high = acts.get(name, (0.0, 0.0))
                acts[name] = (min(low, float(a.min())), max(high, float(a.max())))
    limits: dict[str, Any] = {"activations": acts}
    losses = np.concatenate([_np(f.get("loss_values", [])).ravel() for f in frames] + [np.zeros(0)])
    losses = losses[np.isfinite(losses) & (losses > 0)]
    if losses.size:
        limits["loss"] = (losses.min() / 1.5, losses.max() * 1.5)
    ups = np.array([float(v) for f in frames for v in dict(f.get("updates", {})).values()])
    ups = ups[np.isfinite(ups) & (ups > 0)]
    if ups.size:
        limits["updates"] = (ups.min() / 2, ups.max() * 2)
    return limits


def save_learning_animation(
    frames: Sequence[Mapping[str, Any]],
    path: str | Path,
    fps: float = 6,
    figsize: tuple[float, float] | None = None,
    dpi: float = FRAME_DPI,
) -> Path:
    """Write ``frames`` (see ``draw_learning_frame``) as a looping GIF with matplotlib's ``PillowWriter``;
    ``figsize`` None: ``frame_figsize`` of the first frame (on the 8x8 digits 10.3 × 5.6 in for the MLP, 10.6 × 5.6
    for LeNet-5: 1030 × 560 and 1057 × 560 pixels at the default 100 dpi)."""
    if not frames:
        raise ValueError("save_learning_animation: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = new_figure(figsize or frame_figsize(frames[0]), dpi)
    limits = frame_limits(frames)
    writer = PillowWriter(fps=fps)  # type: ignore[arg-type]  # typed int; it writes int(1000 / fps) ms a frame
    with writer.saving(fig, str(path), dpi):
        for frame in frames:
            draw_learning_frame(fig, frame, limits)
            writer.grab_frame()
    return path


def plot_learning_curves(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path | None = None,
    fig: Figure | None = None,
    title: str = "Learning curves",
) -> Figure:
    """Training loss per step (left, log scale) and validation accuracy per epoch (right), one line per run.

    ``runs``: label -> {``step``, ``train_loss``, ``epoch``, ``val_acc``} (equal-length sequences pairwise).
    Lines are drawn with decreasing width and dashes so identical runs stay visible on top of each other.
    """
    fig = fig or new_figure((9, 3.6), 110)
    fig.clear()
    ax_loss, ax_acc = fig.subplots(1, 2)
    styles = [dict(lw=2.4, ls="-", alpha=0.6), dict(lw=1.0, ls="--"), dict(lw=1.0, ls=":")]
    for i, (label, run) in enumerate(runs.items()):
        style = styles[i % len(styles)]
        ax_loss.plot(_np(run["step"]), _np(run["train_loss"]), label=label, **style)
        ax_acc.plot(_np(run["epoch"]), _np(run["val_acc"]), marker="o", ms=3, label=label, **style)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss (batch)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_gradient_flow(
    steps: Sequence[float],
    norms: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    fig: Figure | None = None,
    title: str = "Gradient flow",
    ylabel: str = "‖∂L/∂W_l‖",
) -> Figure:
    """Per-layer gradient norm over training: one line per layer (input side dark, output side light), log scale."""
    fig, ax = _layer_lines(steps, norms, fig, ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    _finish_layer_lines(fig, ax, title, path)
    return fig


def plot_alignment(
    steps: Sequence[float],
    angles: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    fig: Figure | None = None,
    title: str = "Alignment with the true gradient",
    ylabel: str = "∠(ΔW_rule, ∇W) in degrees",
) -> Figure:
    """Per-layer angle between a learning rule's weight update and the true (backprop) gradient over training, as
    in Lillicrap et al. 2016's Figure 2: one line per layer (input side dark, output side light), 0° is backprop's
    direction, 90° (dashed) an update orthogonal to it."""
    fig, ax = _layer_lines(steps, angles, fig, ylabel)
    ax.axhline(90.0, color="0.4", ls="--", lw=0.8, label="90°: orthogonal")
    finite = [float(a) for values in angles.values() for a in _np(values).ravel() if math.isfinite(a)]
    ax.set_ylim(-3, max([100.0, *(a + 10 for a in finite)]))  # below 0: a layer at 0° (the last) stays in view
    ax.yaxis.set_major_locator(MultipleLocator(30))
    ax.grid(alpha=0.3, lw=0.4)
    _finish_layer_lines(fig, ax, title, path)
    return fig


def _layer_lines(
    steps: Sequence[float], values: Mapping[str, Sequence[float]], fig: Figure | None, ylabel: str
) -> tuple[Figure, Axes]:
    """``fig`` (cleared; a new 7 x 3.8 in figure when None) and its axes with one line per layer over the
    optimizer steps, input side dark, output side light."""
    from matplotlib import colormaps

    fig = fig or new_figure((7, 3.8), 110)
    fig.clear()
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    x = _np(steps)
    for i, (name, ys) in enumerate(values.items()):
        ax.plot(x, _np(ys), lw=1.0, color=cmap(i / max(len(values) - 1, 1) * 0.9), label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    return fig, ax


def _finish_layer_lines(fig: Figure, ax: Axes, title: str, path: str | Path | None) -> None:
    """The layers' legend and the title of a ``_layer_lines`` figure; write it to ``path`` when given."""
    lines = len(ax.get_legend_handles_labels()[0])
    ax.legend(fontsize=8, ncol=2 if lines > 4 else 1, title="layer (input → output)", title_fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: str | Path | None) -> None:
    """Write ``fig`` to ``path`` (creating its folder) when a path is given."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
