"""
Change the learning rule
========================

A layer's backward pass does two separate things with the error G = ∂L/∂y that arrives at its output: it sends
an error to the layer below (the *feedback*), and it turns G and its input into its own weight gradient (the
*reduction*). A learning rule in :mod:`manualbp.rules` changes only the feedback. This tutorial trains the same
small MLP on the 8x8 digits under backpropagation, feedback alignment, sign symmetry and direct feedback
alignment, measures how far each rule's weight updates lie from the true gradient as training goes on, and then
writes a rule of its own.
"""

# sphinx_gallery_thumbnail_number = 3
import logging
import os
import tempfile
import warnings

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

import manualbp
from manualbp.callbacks import Alignment
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.viz import plot_alignment

# sphinx_gallery_start_ignore
# The docs build runs every tutorial in one process: what this one changes globally is restored at its end.
GLOBAL_STATE = (
    torch.get_num_threads(),
    warnings.filters[:],
    {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning_fabric")},
)
# sphinx_gallery_end_ignore

QUICK = os.environ.get("MANUALBP_DOCS_QUICK") == "1"
EPOCHS = 4 if QUICK else 20  # 20 optimizer steps per epoch on the digits (1,258 images, batches of 64)
EVERY = 5 if QUICK else 10  # the Alignment callback measures every EVERY optimizer steps

# Lightning's notices ("GPU available: False", ...) and one deprecation warning of its own are not the subject here.
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

# Networks this small train faster on one thread than on several, above all on a CPU shared with other jobs.
torch.set_num_threads(1)

# %%
# The feedback and the reduction
# ------------------------------
#
# For a linear layer :math:`y = x W^\top + b` with :math:`G = \partial L / \partial y`, backpropagation computes
#
# .. math::
#
#     \frac{\partial L}{\partial x} = G\,W \quad\text{(feedback)}, \qquad
#     \frac{\partial L}{\partial W} = \sum_n G_n^\top x_n, \quad
#     \frac{\partial L}{\partial b} = \sum_n G_n \quad\text{(reduction)}.
#
# A rule replaces :math:`W` in the feedback by a matrix :math:`M` of the same shape and leaves the reduction
# alone:
#
# * **feedback alignment** (Lillicrap et al. 2016): :math:`M = B`, fixed and random;
# * **sign symmetry** (Liao, Leibo and Poggio 2016): :math:`M = \operatorname{sign}(W)`, recomputed every step;
# * **direct feedback alignment** (Nøkland 2016): each hidden layer :math:`l` receives the output error
#   :math:`e = \partial L / \partial z` (:math:`z` the logits) through its own fixed random matrix,
#   :math:`\delta_l = e\,B_l`, instead of the error of the layer above.
#
# Since the last layer's :math:`G` is the output error itself under every rule, its weight gradient is always
# the true one; the rules differ in what reaches the layers below it.
#
# ``manualbp.convert(model, rule=...)`` swaps a torch model's layers for manual ones under a rule. The fixed
# matrices are buffers named ``feedback_weight``:

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
manualbp.convert(model, rule="feedback_alignment")
print(model)
print({name: tuple(b.shape) for name, b in model.named_buffers()})

# %%
# On one batch of digits, the gradient this model computes and the true one (from ``manualbp.to_torch``, an
# autograd copy with the same weights and no rule) agree for the last layer and not for the first. The angle
# between two gradients, flattened, is :math:`\arccos\big(\langle a, b\rangle / (\lVert a\rVert\,\lVert
# b\rVert)\big)`: 0° for the same direction, 90° for an update orthogonal to the true gradient.

data = DigitsDataModule()
data.setup("fit")
images, labels = data.train_set[:64]


def gradients(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weight gradients of the mean cross entropy on the batch above."""
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if name.endswith("weight")}


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).item()


true = gradients(manualbp.to_torch(model))
rule = gradients(model)
for name in true:
    print(f"{name}: angle to the true gradient {angle(rule[name], true[name]):5.1f}°")

# %%
# With :math:`B = W` feedback alignment *is* backpropagation, which makes a good check of the seam: copy each
# weight into its ``feedback_weight`` and the gradients become the true ones, here to the last bit.

with torch.no_grad():
    for layer in (model[1], model[3]):
        layer.feedback_weight.copy_(layer.weight)
same = gradients(model)
print("largest difference from backprop with B = W:", max((same[n] - true[n]).abs().max().item() for n in true))

# %%
# Training under four rules
# -------------------------
#
# ``ClassifierModule(rule=...)`` builds the network from manual layers and attaches the rule, with the fixed
# matrices drawn from seed 0. The network is ``mlp(hidden=(128, 128))``: Flatten, two hidden layers ``fc1`` and
# ``fc2`` (each a Linear followed by a ReLU), and the output layer ``out``. Every run starts from the same
# weights (``seed_everything(0)`` before the model is built) and sees the same batches (the data module's seed).
#
# :class:`manualbp.callbacks.Alignment` measures, every ``EVERY`` optimizer steps, the angle between the
# gradient the rule produced and the true gradient on the same batch, for each weight. It computes the true
# gradient with the autograd twin of the network, called with the network's own parameters, and does not
# change training. A small callback of our own keeps the validation accuracy of each epoch.


class EpochAccuracy(pl.Callback):
    """The validation accuracy at the end of every epoch (the sanity check before training left out)."""

    def __init__(self) -> None:
        self.val_acc: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_acc.append(trainer.callback_metrics["val_acc"].item())


def fit(**model_args) -> dict:
    """Train a ClassifierModule on the digits for EPOCHS epochs; return its accuracies and alignment angles."""
    pl.seed_everything(0, verbose=False)
    classifier = ClassifierModule(in_shape=(1, 8, 8), **model_args)
    alignment, accuracy = Alignment(every_n_steps=EVERY, figure=False), EpochAccuracy()
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(
            max_epochs=EPOCHS,
            callbacks=[alignment, accuracy],
            default_root_dir=folder,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(classifier, DigitsDataModule())
        (test,) = trainer.test(classifier, DigitsDataModule(), verbose=False)
    angles = {  # "alignment/fc1.weight/angle" -> "fc1.weight"
        key.split("/")[1]: [h[key] for h in alignment.history] for key in alignment.history[0]
    }
    return {"val_acc": accuracy.val_acc, "test_acc": test["test_acc"], "steps": alignment.steps, "angles": angles}


RULES = ["backprop", "feedback_alignment", "sign_symmetry", "direct_feedback_alignment"]
COLORS = dict(zip([*RULES, "sparse_feedback(0.25)", "sparse_feedback(0.05)"], plt.cm.tab10.colors))
runs = {}
for name in RULES:
    runs[name] = fit(hidden=(128, 128), rule=name)

# %%
# At the end of the fit the callback prints the angles of the last step it measured (the lines above; with
# ``figure=True``, its default, it also draws them into the run folder). The test accuracy of each rule, and the
# hidden layers' angles at the first and the last measured step:

print(f"{'rule':<27} {'test_acc':>8}   {'fc1 angle':>15}   {'fc2 angle':>15}")
for name, run in runs.items():
    fc1, fc2 = run["angles"]["fc1.weight"], run["angles"]["fc2.weight"]
    print(f"{name:<27} {run['test_acc']:8.4f}   {fc1[0]:5.1f}° -> {fc1[-1]:5.1f}°   {fc2[0]:5.1f}° -> {fc2[-1]:5.1f}°")

# %%
# All four rules learn the digits. Backpropagation and sign symmetry lead from the first epoch. Feedback
# alignment and direct feedback alignment start slower: their hidden layers' first updates are nearly
# orthogonal to the true gradient (below). After a few epochs they catch up, and on a task this small the four
# end within about a percent of each other.

fig, ax = plt.subplots(figsize=(7, 3.8))
for name, run in runs.items():
    ax.plot(range(1, EPOCHS + 1), run["val_acc"], marker="o", ms=3, color=COLORS[name], label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("validation accuracy")
ax.set_ylim(top=1.0)
ax.xaxis.get_major_locator().set_params(integer=True)
ax.grid(alpha=0.3)
ax.legend()
ax.set_title("mlp(128, 128) on the 8x8 digits")
fig.tight_layout()
plt.show()

# %%
# Alignment over training
# -----------------------
#
# This is the figure the ``Alignment`` callback writes (``manualbp.viz.plot_alignment``), drawn here for the
# feedback alignment run. The hidden layers start near 90°: B is random, so the error it sends down is
# unrelated to the true one. Their angles then fall well below 90° (Lillicrap et al.'s Figure 2). The forward
# weights are shaped by updates that B's error produced, and come to align with B, so that B carries useful
# information about the true error. The output layer stays at 0°.

fa = runs["feedback_alignment"]
fig = plt.figure(figsize=(7, 3.8))
plot_alignment(fa["steps"], fa["angles"], fig=fig, title="Feedback alignment: angle to the true gradient")
plt.show()

# %%
# The three rules side by side, hidden layers only. Sign symmetry starts well below 90°: sign(W) shares the
# signs of W, so its error is correlated with the true one from the first step. Direct feedback alignment's
# angles fall from near 90° as feedback alignment's do. Backpropagation's angle is 0° throughout (not drawn).

fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), sharey=True)
for ax, name in zip(axes, RULES[1:]):
    run = runs[name]
    for layer, color in (("fc1.weight", "tab:blue"), ("fc2.weight", "tab:orange")):
        ax.plot(run["steps"], run["angles"][layer], color=color, label=layer)
    ax.axhline(90, color="0.4", ls="--", lw=0.8)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("angle to the true gradient (°)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %%
# A rule of your own
# ------------------
#
# A rule is a subclass of :class:`manualbp.rules.Rule` that chooses the matrix :math:`M`. Two methods, both
# optional:
#
# * ``feedback_matrix(weight, feedback_weight)`` returns :math:`M`, called at every forward pass that records a
#   graph; it gets the layer's weight (detached) and its fixed buffer;
# * ``make_feedback_weight(weight, generator)`` returns the layer's fixed ``feedback_weight`` buffer, drawn
#   once when the rule is attached, from a generator seeded by the rule's ``seed``. Being a buffer, it is
#   saved in checkpoints.
#
# The rule below sends the error back through :math:`W` with a fixed random part of its connections cut,
# :math:`M = W \odot K` with :math:`K_{ij} \sim \text{Bernoulli}(p)` drawn once: only a fraction :math:`p` of
# the forward connections have a partner in the backward pass.


class SparseFeedback(manualbp.rules.Rule):
    """dL/dx = G · (W ⊙ K): backprop through a fixed random fraction ``keep`` of the connections (K a 0/1 mask)."""

    name = "sparse_feedback"

    def __init__(self, keep: float = 0.25, seed: int = 0) -> None:
        super().__init__(seed)
        self.keep = keep

    def make_feedback_weight(self, weight, generator):
        return (torch.rand(weight.shape, generator=generator) < self.keep).to(weight.dtype)  # K

    def feedback_matrix(self, weight, feedback_weight):
        return weight * feedback_weight  # W ⊙ K


# %%
# ``ClassifierModule`` takes a rule by name only (the built-in ones). A rule object goes through
# ``manualbp.convert``: build the same network, attach the rule, and hand the network over as ``net``; the
# classifier keeps the rule and prints the layers it found. ``seed_everything(0)`` before building the network
# gives it the same initial weights as the runs above.

for keep in (0.25, 0.05):
    pl.seed_everything(0, verbose=False)
    net = manualbp.models.mlp(hidden=(128, 128), in_shape=(1, 8, 8))
    manualbp.convert(net, rule=SparseFeedback(keep=keep))
    runs[f"sparse_feedback({keep})"] = fit(net=net)
print(net.fc1)
for name in ("sparse_feedback(0.25)", "sparse_feedback(0.05)"):
    run = runs[name]
    fc1, fc2 = run["angles"]["fc1.weight"], run["angles"]["fc2.weight"]
    print(
        f"{name}: test_acc {run['test_acc']:.4f}, fc1 {fc1[0]:.1f}° -> {fc1[-1]:.1f}°, fc2 {fc2[0]:.1f}° -> {fc2[-1]:.1f}°"
    )

# %%
# Keeping a quarter of the connections, the first layer's update starts at about 70° from the true gradient;
# keeping 5% of them, near 90°, as with a random B. Both angles then fall over training, as feedback
# alignment's do, the first to about 30°, and both rules learn the digits.

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
for name in ("backprop", "feedback_alignment", "sparse_feedback(0.25)", "sparse_feedback(0.05)"):
    run = runs[name]
    left.plot(range(1, EPOCHS + 1), run["val_acc"], marker="o", ms=3, color=COLORS[name], label=name)
    if name != "backprop":
        right.plot(run["steps"], run["angles"]["fc1.weight"], color=COLORS[name], label=name)
left.set(xlabel="epoch", ylabel="validation accuracy", title="accuracy")
left.set_ylim(top=1.0)
left.xaxis.get_major_locator().set_params(integer=True)
right.axhline(90, color="0.4", ls="--", lw=0.8)
right.set(xlabel="optimizer step", ylabel="fc1 angle to the true gradient (°)", ylim=(0, 110), title="fc1 alignment")
for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# What to take from this
# ----------------------
#
# * A rule changes one matrix in each layer's backward; the weight gradient is computed from the error the
#   rule delivered, by the layer's own reduction.
# * ``manualbp.callbacks.Alignment`` measures the angle to the true gradient while training; on the command
#   line: ``manualbp fit --model.rule=feedback_alignment --trainer.callbacks+=Alignment``.
# * Rules compose with the rest of manualbp: per-sample gradients and DP-SGD change the reduction, and work
#   under any rule.

# sphinx_gallery_start_ignore
torch.set_num_threads(GLOBAL_STATE[0])
warnings.filters[:] = GLOBAL_STATE[1]
for name, level in GLOBAL_STATE[2].items():
    logging.getLogger(name).setLevel(level)
# sphinx_gallery_end_ignore
