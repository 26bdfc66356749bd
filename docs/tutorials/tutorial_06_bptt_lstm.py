r"""
Backpropagation through time in an LSTM
=======================================

:class:`manualbp.nn.LSTM` is a twin of :class:`torch.nn.LSTM` whose backward is backpropagation through time
(BPTT) written out: one ``torch.autograd.Function`` per layer and direction over the whole sequence, with the
loop over the time steps inside its ``backward``. This tutorial states the equations, checks the layer against
torch's, follows the error as it travels back through the steps, trains the row-by-row digit classifier and
takes per-sample gradients of its LSTM.
"""

# sphinx_gallery_thumbnail_number = 1
import logging
import os
import tempfile
import warnings

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import manualbp
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule

# sphinx_gallery_start_ignore
# The docs build runs every tutorial in one process: what this one changes globally is restored at its end.
GLOBAL_STATE = (
    torch.get_num_threads(),
    warnings.filters[:],
    {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning_fabric")},
)
# sphinx_gallery_end_ignore

QUICK = os.environ.get("MANUALBP_DOCS_QUICK") == "1"
EPOCHS = 2 if QUICK else 15  # epochs of the row-by-row classifier, 20 batches of 64 each

# Lightning's notices ("GPU available: False", ...) and one deprecation warning of its own are not the subject here.
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

# Networks this small train faster on one thread than on several, above all on a CPU shared with other jobs.
torch.set_num_threads(1)

# %%
# The equations
# -------------
#
# At step :math:`t` an LSTM layer reads its input :math:`x_t` and its previous state :math:`(h_{t-1},
# c_{t-1})`. The four gates come from one affine map (gate order :math:`i, f, g, o`, as in torch):
#
# .. math::
#
#     [a_i, a_f, a_g, a_o] &= x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh} \\
#     i = \sigma(a_i), \quad f &= \sigma(a_f), \quad g = \tanh(a_g), \quad o = \sigma(a_o) \\
#     c_t &= f \odot c_{t-1} + i \odot g \\
#     h_t &= o \odot \tanh(c_t)
#
# and its output at step :math:`t` is :math:`y_t = h_t`. The loss :math:`L` depends on :math:`h_t` directly,
# through :math:`y_t`, and through every later step, by way of :math:`h_t` and :math:`c_t`. BPTT carries
# backwards the errors that reach the state through the later steps, :math:`\delta h_t` and :math:`\delta c_t`,
# starting from the gradients of the final state the layer returns, :math:`\delta h_T = \partial L/\partial h_n`
# and :math:`\delta c_T = \partial L/\partial c_n`. At each step :math:`t = T, \dots, 1` it adds the output's
# own error, :math:`\bar h_t = \delta h_t + \partial L/\partial y_t` (the whole :math:`\mathrm dL/\mathrm dh_t`),
# and computes
#
# .. math::
#
#     \bar c_t &= \delta c_t + \bar h_t \odot o \odot (1 - \tanh^2 c_t) \\
#     \frac{\partial L}{\partial a_i} &= \bar c_t \odot g \odot i(1-i), \qquad
#     \frac{\partial L}{\partial a_f} = \bar c_t \odot c_{t-1} \odot f(1-f) \\
#     \frac{\partial L}{\partial a_g} &= \bar c_t \odot i \odot (1-g^2), \qquad
#     \frac{\partial L}{\partial a_o} = \bar h_t \odot \tanh(c_t) \odot o(1-o) \\
#     \delta h_{t-1} &= \frac{\partial L}{\partial a_t}\, W_{hh}, \qquad
#     \delta c_{t-1} = \bar c_t \odot f
#
# where :math:`\partial L/\partial a_t` is the four gates' errors side by side, in the order of :math:`W_{hh}`'s
# rows. The parameter gradients are sums over the steps,
#
# .. math::
#
#     \frac{\partial L}{\partial W_{ih}} = \sum_t \Big(\frac{\partial L}{\partial a_t}\Big)^{\!\top} x_t, \qquad
#     \frac{\partial L}{\partial W_{hh}} = \sum_t \Big(\frac{\partial L}{\partial a_t}\Big)^{\!\top} h_{t-1},
#     \qquad
#     \frac{\partial L}{\partial b_{ih}} = \frac{\partial L}{\partial b_{hh}} = \sum_t \frac{\partial L}{\partial a_t},
#
# and :math:`\partial L/\partial x_t = (\partial L/\partial a_t)\, W_{ih}`. Only :math:`\delta h` and
# :math:`\delta c` need the loop; the input projection of all steps, its weight gradient and
# :math:`\partial L/\partial x` are one matrix product each over the whole sequence. The layer's
# ``LSTMFunction`` (``manualbp/functional/recurrent/lstm.py``) carries these formulas in its docstring, with the
# projection (``proj_size``) and the forward-mode derivatives.

# %%
# The manual LSTM against torch's
# -------------------------------
#
# The two layers take the same constructor arguments and have the same parameter names, so one loads the
# other's state dict. A two-layer LSTM in float64, a batch of 4 sequences of 8 steps, given initial states, and
# a loss that reads every output and both final states:

torch.manual_seed(0)
reference = torch.nn.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True).double()
lstm = manualbp.nn.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True).double()
lstm.load_state_dict(reference.state_dict())
print(lstm)

x = torch.randn(4, 8, 8, dtype=torch.float64)
h0, c0 = torch.randn(2, 4, 16, dtype=torch.float64), torch.randn(2, 4, 16, dtype=torch.float64)
weights = torch.randn(4, 8, 16, dtype=torch.float64)  # a fixed random readout of the outputs


def run(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Outputs, final states and every gradient (input, initial states, parameters) of one layer."""
    inputs = [t.clone().requires_grad_() for t in (x, h0, c0)]
    y, (h_n, c_n) = layer(inputs[0], (inputs[1], inputs[2]))
    loss = (y * weights).sum() + h_n.square().sum() + c_n.sin().sum()
    grads = torch.autograd.grad(loss, [*inputs, *layer.parameters()])
    names = ["dL/dx", "dL/dh0", "dL/dc0", *(f"dL/d{n}" for n, _ in layer.named_parameters())]
    return {"y": y, "h_n": h_n, "c_n": c_n, **dict(zip(names, grads))}


manual, torch_ = run(lstm), run(reference)
print("output of the manual layer made by:", type(lstm(x)[0].grad_fn).__name__)
for name in manual:
    print(f"{name:17} largest |difference| {(manual[name] - torch_[name]).abs().max().item():.1e}")

# %%
# The gradient flowing back through time
# --------------------------------------
#
# A classifier that reads only the last state of a sequence: an LSTM with 32 hidden features over 40 steps of
# random input, a Linear readout of :math:`h_T`, cross entropy on random labels. A hook on the output sequence
# :math:`y` sees :math:`\partial L/\partial y_t`, the error that enters at each step from outside the recurrence:
# here it is zero at every step but the last.

torch.manual_seed(0)
T, H = 40, 32
lstm = manualbp.nn.LSTM(8, H, batch_first=True)
readout = torch.nn.Linear(H, 10)
x, labels = torch.randn(16, T, 8), torch.randint(0, 10, (16,))

y, _ = lstm(x)
hooked = []
y.register_hook(hooked.append)
F.cross_entropy(readout(y[:, -1]), labels).backward()
print("‖∂L/∂y_t‖ for t = 1..T:", " ".join(f"{v:.2g}" for v in hooked[0].norm(dim=(0, 2)).tolist()))

# %%
# The error that reaches step :math:`t` through the recurrence is :math:`\delta h_t` (and :math:`\delta c_t`),
# which the loop inside ``backward`` carries and discards. To look at it, run the same layer one step at a time,
# handing each call the state of the one before: each call is then a sequence of length one, and its backward
# returns :math:`\partial L/\partial h_0` and :math:`\partial L/\partial c_0`, which are :math:`\delta h_{t-1}`
# and :math:`\delta c_{t-1}` of the whole sequence. The gradients of the input show that the step-by-step graph
# computes the same thing as the single call.


def carried_errors(layer: torch.nn.Module) -> tuple[list[float], list[float], torch.Tensor]:
    """‖δh_t‖ and ‖δc_t‖ for t = 1..T (over the batch and the features), and dL/dx, running one step per call."""
    steps = x.clone().requires_grad_()
    h, c = torch.zeros(1, len(x), H), torch.zeros(1, len(x), H)
    states = []
    for t in range(T):
        _, (h, c) = layer(steps[:, t : t + 1], (h, c))
        h.retain_grad()
        c.retain_grad()
        states.append((h, c))
    F.cross_entropy(readout(h[-1]), labels).backward()
    norm = lambda g: 0.0 if g is None else g.norm().item()  # noqa: E731  (c_T: the loss does not read it)
    return [norm(h.grad) for h, _ in states], [norm(c.grad) for _, c in states], steps.grad


dh, dc, grad_x = carried_errors(lstm)
whole = x.clone().requires_grad_()
F.cross_entropy(readout(lstm(whole)[0][:, -1]), labels).backward()
print(f"dL/dx, one call vs one call per step: largest |difference| {(whole.grad - grad_x).abs().max().item():.1e}")

# %%
# With torch's initialisation the forget gate starts near :math:`f = \sigma(0) = 1/2`, and
# :math:`\delta c_{t-1} = \bar c_t \odot f` halves the cell's error at every step: 40 steps back it is down by
# more than eight orders of magnitude, and the first steps of the sequence get almost nothing of the loss's gradient. A
# forget-gate bias of +3 (:math:`f \approx 0.95`) lets the cell carry its error back almost unchanged (a bias of
# +1 is the usual advice, after Jozefowicz et al. 2015). The bias is :math:`b_{ih}`'s second quarter, in the
# gate order :math:`i, f, g, o`.

with torch.no_grad():
    lstm.bias_ih_l0[H : 2 * H] += 3.0
dh_open, dc_open, _ = carried_errors(lstm)

steps = range(1, T + 1)
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.semilogy(steps, dh, color="tab:blue", label=r"$\|\delta h_t\|$, forget bias 0")
ax.semilogy(steps[:-1], dc[:-1], color="tab:blue", ls="--", label=r"$\|\delta c_t\|$, forget bias 0")
ax.semilogy(steps, dh_open, color="tab:orange", label=r"$\|\delta h_t\|$, forget bias +3")
ax.semilogy(steps[:-1], dc_open[:-1], color="tab:orange", ls="--", label=r"$\|\delta c_t\|$, forget bias +3")
ax.set_xlabel("step t (the loss reads the last state, t = 40)")
ax.set_ylabel("norm of the carried error")
ax.set_title("The error travelling back through time")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The row-by-row digit classifier
# -------------------------------
#
# ``ClassifierModule(arch="lstm")`` reads each image row by row: an 8x8 digit is a sequence of 8 steps of 8
# pixels. The network is ``rows`` (the image as a sequence), ``lstm`` (``manualbp.nn.LSTM``, 128 hidden
# features), ``last`` (the final hidden state) and ``out`` (a Linear layer to the 10 classes). The recurrent
# architectures train with Adam under a one-cycle schedule peaking at lr 5e-3 and clip the gradient norm to 1.


class EpochAccuracy(pl.Callback):
    """The validation accuracy at the end of every epoch (the sanity check before training left out)."""

    def __init__(self) -> None:
        self.val_acc: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_acc.append(trainer.callback_metrics["val_acc"].item())


pl.seed_everything(0, verbose=False)
classifier = ClassifierModule(arch="lstm", in_shape=(1, 8, 8))
print(classifier.net)
epoch_accuracy = EpochAccuracy()
with tempfile.TemporaryDirectory() as folder:
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        callbacks=[epoch_accuracy],
        default_root_dir=folder,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    digits = DigitsDataModule()
    trainer.fit(classifier, digits)
    (test,) = trainer.test(classifier, digits, verbose=False)
print("val_acc per epoch:", " ".join(f"{a:.3f}" for a in epoch_accuracy.val_acc))
print(f"test_acc {test['test_acc']:.4f}")

# %%
# Per-sample gradients of the LSTM
# --------------------------------
#
# ``manualbp.per_sample_grads`` works on the recurrent layers too: the weight gradient of an LSTM is a sum over
# the batch and over the steps, and the per-sample gradient of sample :math:`n` keeps its own sum over the
# steps, :math:`\sum_t (\partial L/\partial a_{nt})^\top x_{nt}` for :math:`W_{ih}`. Here on the 359 test images,
# checked against a loop that runs each of the first 8 through the network alone (float32, so the differences
# are float32 rounding):

net = classifier.net
images, labels = digits.test_set[:]
net.zero_grad()
with manualbp.per_sample_grads(net, loss_reduction="sum"):
    losses = manualbp.functional.cross_entropy(net(images), labels, reduction="none")
    losses.sum().backward()
lstm_params = dict(net.lstm.named_parameters())
for name, p in lstm_params.items():
    print(f"lstm.{name:13} grad_sample {tuple(p.grad_sample.shape)}")

per_sample = {name: p.grad_sample.clone() for name, p in lstm_params.items()}
worst = 0.0
for n in range(8):  # the first 8 images, one backward each
    net.zero_grad()
    F.cross_entropy(net(images[n : n + 1]), labels[n : n + 1], reduction="sum").backward()
    worst = max(worst, *((per_sample[k][n] - p.grad).abs().max().item() for k, p in lstm_params.items()))
print(f"largest |difference| from one backward per image (first 8 images): {worst:.1e}")

# %%
# The norm of each image's gradient over all the LSTM's parameters grows with its loss: images the network
# already classifies well contribute little to a step, and the misclassified ones dominate it. That is what
# DP-SGD's per-sample clipping bounds (see the tutorial on per-sample gradients and DP-SGD).

norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
with torch.no_grad():
    wrong = net(images).argmax(1) != labels
print(f"{int(wrong.sum())} of {len(labels)} test images misclassified")
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.scatter(losses.detach()[~wrong], norms[~wrong], s=10, alpha=0.6, label="classified correctly")
ax.scatter(losses.detach()[wrong], norms[wrong], s=30, marker="x", color="tab:red", label="misclassified")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("loss of the image")
ax.set_ylabel("norm of its gradient (LSTM parameters)")
ax.set_title("Per-sample gradients of the row-by-row LSTM")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# sphinx_gallery_start_ignore
torch.set_num_threads(GLOBAL_STATE[0])
warnings.filters[:] = GLOBAL_STATE[1]
for name, level in GLOBAL_STATE[2].items():
    logging.getLogger(name).setLevel(level)
# sphinx_gallery_end_ignore
