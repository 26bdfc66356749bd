"""
Backpropagation, by hand
========================

A network of two layers, 64 → 16 → 10 with a tanh between them, classifies one 8x8 digit. This page
computes its forward pass one step at a time, then its gradients by the chain rule in plain tensor
operations, and compares them with the gradients of manualbp's hand-written ``backward`` methods and with
autograd's. Then it takes plain gradient-descent steps on that one digit, and at the end it trains a
small network on all the digits while filming how it learns to recognise a 5.

Everything runs on the CPU in a few seconds, on scikit-learn's bundled digits (no download).
"""

# %%
# The digit
# ---------
#
# ``DigitsDataModule`` holds scikit-learn's 1,797 handwritten digits of 8x8 pixels, scaled to [0, 1], split
# into training, validation and test sets. We take the first 5 of the training set and flatten it into a
# vector :math:`x \in \mathbb{R}^{64}`. The computations by hand run in float64, so that the comparisons
# below show agreement to the last bits rather than float32's rounding.

import inspect
import os
import shutil
import tempfile
from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import manualbp
import manualbp.functional as MF
from manualbp.data import DigitsDataModule

QUICK = os.environ.get("MANUALBP_DOCS_QUICK") == "1"  # fewer training epochs for CI; every cell still runs
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)

data = DigitsDataModule()  # seeded split: 1,258 training, 180 validation, 359 test images
data.setup()
images, labels = data.train_set.tensors
index = int((labels == 5).nonzero()[0])  # the first 5 of the training set
x = images[index].reshape(64).double()  # the image as a column vector, pixel values in [0, 1]
y = int(labels[index])
print(f"training image {index}, label y = {y}, x: {tuple(x.shape)}")

fig, ax = plt.subplots(figsize=(2.6, 2.6))
ax.imshow(x.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
ax.set_title(f"x (label {y})")
ax.set_xticks([])
ax.set_yticks([])
plt.show()

# %%
# The network
# -----------
#
# Two manualbp ``Linear`` layers with a ``Tanh`` between them, initialised as ``torch.nn.Linear`` is (uniform
# in :math:`\pm 1/\sqrt{n}` for a layer of :math:`n` inputs). The module is used further down, by ``manualbp.trace``; for the
# computation by hand we take plain copies of its four parameters,
# :math:`W_1 \in \mathbb{R}^{16 \times 64}`, :math:`b_1 \in \mathbb{R}^{16}`,
# :math:`W_2 \in \mathbb{R}^{10 \times 16}` and :math:`b_2 \in \mathbb{R}^{10}`.

net = torch.nn.Sequential(
    OrderedDict(fc1=manualbp.nn.Linear(64, 16), act=manualbp.nn.Tanh(), fc2=manualbp.nn.Linear(16, 10))
).double()
print(net)
W1, b1, W2, b2 = (p.detach().clone() for p in net.parameters())
print({name: tuple(p.shape) for name, p in net.named_parameters()})

# %%
# The forward pass
# ----------------
#
# .. math::
#
#    z_1 = W_1 x + b_1, \qquad h = \tanh(z_1), \qquad z_2 = W_2 h + b_2, \qquad
#    p_c = \operatorname{softmax}(z_2)_c = \frac{e^{z_{2,c}}}{\sum_k e^{z_{2,k}}}, \qquad L = -\log p_y .
#
# :math:`z_1` and :math:`h` have 16 entries (the hidden layer), :math:`z_2` (the logits) and :math:`p` (the
# class probabilities) 10. The softmax subtracts the largest logit first, which changes nothing in
# :math:`p` but keeps :math:`e^{z}` from overflowing.

z1 = W1 @ x + b1
h = torch.tanh(z1)
z2 = W2 @ h + b2
e = torch.exp(z2 - z2.max())
p = e / e.sum()
L = -torch.log(p[y])
print("z1 =", z1)
print("h  =", h)
print("z2 =", z2)
print("p  =", p)
print(f"L = -log p_{y} = {L.item():.4f}   (an untrained network: p is close to uniform, L close to log 10 = 2.3026)")

# %%
# The backward pass
# -----------------
#
# The chain rule, from the loss down. The derivative of :math:`L = -z_{2,y} + \log \sum_k e^{z_{2,k}}`
# with respect to the logit :math:`z_{2,c}` is :math:`p_c - [c = y]`, so the error signal at the logits is
#
# .. math::
#
#    \delta_2 = \frac{\partial L}{\partial z_2} = p - \operatorname{onehot}(y).
#
# :math:`z_2 = W_2 h + b_2` gives the second layer's gradients, and the error it sends down to :math:`h`:
#
# .. math::
#
#    \frac{\partial L}{\partial W_2} = \delta_2 h^\top, \qquad
#    \frac{\partial L}{\partial b_2} = \delta_2, \qquad
#    \frac{\partial L}{\partial h} = W_2^\top \delta_2 .
#
# The tanh acts elementwise, with :math:`\tanh'(z) = 1 - \tanh^2(z)`, so its Jacobian is diagonal and the
# error at :math:`z_1` is a product entry by entry (:math:`\odot`):
#
# .. math::
#
#    \delta_1 = \frac{\partial L}{\partial z_1} = (W_2^\top \delta_2) \odot (1 - h^2), \qquad
#    \frac{\partial L}{\partial W_1} = \delta_1 x^\top, \qquad
#    \frac{\partial L}{\partial b_1} = \delta_1, \qquad
#    \frac{\partial L}{\partial x} = W_1^\top \delta_1 .
#
# In plain tensor operations, one line per formula:

delta2 = p - F.one_hot(torch.tensor(y), 10).double()
dW2 = torch.outer(delta2, h)
db2 = delta2
dh = W2.T @ delta2
delta1 = dh * (1 - h**2)
dW1 = torch.outer(delta1, x)
db1 = delta1
dx = W1.T @ delta1
print("delta2 =", delta2)
print("dL/dh  =", dh)
print("delta1 =", delta1)
print(f"dL/dW2: {tuple(dW2.shape)}, dL/dW1: {tuple(dW1.shape)}, dL/dx: {tuple(dx.shape)}")

# %%
# :math:`\delta_2` is negative only at the true class: gradient descent raises the logit of the 5 and lowers
# the others. Each weight gradient is an outer product, the error at a layer's output times the input it
# received. Drawn as pictures, row :math:`j` of :math:`\partial L / \partial W_1 = \delta_1 x^\top` is the
# digit itself, scaled by :math:`\delta_{1,j}`: a hidden unit's weights change in the shape of the image,
# towards it or away from it depending on the sign of its error.

lim2, lim1 = dW2.abs().max().item(), dW1.abs().max().item()
fig = plt.figure(figsize=(9, 3.6), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
ax = left.subplots()
im = ax.imshow(dW2, cmap="RdBu_r", vmin=-lim2, vmax=lim2)
ax.set_title(r"$\partial L/\partial W_2 = \delta_2 h^\top$ (10 × 16)")
ax.set_xlabel("hidden unit")
ax.set_ylabel("class")
ax.set_yticks(range(10))
left.colorbar(im, ax=ax, shrink=0.8)
axes = right.subplots(4, 4)
for j, ax in enumerate(axes.flat):
    ax.imshow(dW1[j].reshape(8, 8), cmap="RdBu_r", vmin=-lim1, vmax=lim1)
    ax.set_title(f"δ1[{j}] = {delta1[j]:+.3f}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
right.suptitle(r"rows of $\partial L/\partial W_1 = \delta_1 x^\top$, each as 8×8", fontsize=10)
plt.show()

# %%
# The same gradients from manualbp's Functions, and from autograd
# ----------------------------------------------------------------
#
# The same forward pass through ``manualbp.functional`` (``linear``, ``tanh``, ``cross_entropy``) builds a
# graph whose every node is one of manualbp's ``autograd.Function`` classes; ``backward()`` runs their
# hand-written ``backward`` methods and nothing of autograd's. The same pass through
# ``torch.nn.functional`` gives autograd's gradients. manualbp works with rows (a batch of one image,
# :math:`y = x W^\top + b`), which is the transpose of the column form above and the same numbers.


def gradients_through(functional, tanh):
    """Gradients of the loss with respect to (W1, b1, W2, b2) through ``functional`` (a module with ``linear``
    and ``cross_entropy``) and ``tanh``."""
    params = [t.clone().requires_grad_() for t in (W1, b1, W2, b2)]
    w1, c1, w2, c2 = params
    logits = functional.linear(tanh(functional.linear(x[None], w1, c1)), w2, c2)  # (1, 10)
    loss = functional.cross_entropy(logits, torch.tensor([y]))
    loss.backward()
    return loss, [q.grad for q in params]


loss_manual, grads_manual = gradients_through(MF, MF.tanh)
loss_torch, grads_torch = gradients_through(F, torch.tanh)

# the graph manualbp built, from the loss down to the parameters
node, chain = loss_manual.grad_fn, []
while node is not None:
    chain.append(type(node).__name__)
    node = next((n for n, _ in node.next_functions if n is not None and type(n).__name__ != "AccumulateGrad"), None)
print("manualbp graph: " + " -> ".join(chain))
print(f"loss: by hand {L.item():.10f}, manualbp {loss_manual.item():.10f}, autograd {loss_torch.item():.10f}\n")

print(f"{'gradient':<10} {'shape':<9} {'max |by hand - manualbp|':>25} {'max |by hand - autograd|':>25}")
for name, mine, manual, auto in zip(
    ("dL/dW1", "dL/db1", "dL/dW2", "dL/db2"), (dW1, db1, dW2, db2), grads_manual, grads_torch
):
    print(
        f"{name:<10} {tuple(mine.shape)!s:<9} {(mine - manual).abs().max().item():>25.2e}"
        f" {(mine - auto).abs().max().item():>25.2e}"
    )

# %%
# The three agree to float64's rounding (differences of order :math:`10^{-17}`, or exactly 0). The backward
# that ran for the tanh is this, from ``manualbp/functional/activation.py``: the saved output
# :math:`y = \tanh(x)` and the line :math:`\partial L/\partial x = \partial L/\partial y \odot (1 - y^2)`,
# which is how :math:`\delta_1` was computed above.

print(inspect.getsource(MF.TanhFunction.backward))

# %%
# Recording the error signals: ``manualbp.trace``
# -----------------------------------------------
#
# In a network, the same quantities are the error signal of each layer, :math:`\partial L/\partial y_l` for
# the output :math:`y_l` of layer :math:`l`, and its parameter gradients. ``manualbp.trace(model)`` records
# them during one forward and backward pass: for ``fc2`` (output :math:`z_2`) the error is :math:`\delta_2`,
# for ``act`` (output :math:`h`) it is :math:`W_2^\top \delta_2`, for ``fc1`` (output :math:`z_1`) it is
# :math:`\delta_1`.

with manualbp.trace(net) as record:
    loss = MF.cross_entropy(net(x[None]), torch.tensor([y]))
    loss.backward()
print(record)
print()
print(f"{'layer':<6} {'error signal':<18} {'max |by hand - traced|':>22}")
for layer, name, mine in (("fc2", "delta2", delta2), ("act", "W2^T delta2", dh), ("fc1", "delta1", delta1)):
    print(f"{layer:<6} {name:<18} {(record[layer].error[0] - mine).abs().max().item():>22.2e}")
for layer, pname, mine in (("fc1", "weight", dW1), ("fc1", "bias", db1), ("fc2", "weight", dW2), ("fc2", "bias", db2)):
    diff = (record[layer].param_grads[pname] - mine).abs().max().item()
    print(f"{layer:<6} {'dL/d' + pname:<18} {diff:>22.2e}")

# %%
# The weight update
# -----------------
#
# Gradient descent moves every parameter a small step against its gradient,
#
# .. math::
#
#    \Delta w = -\eta \, \frac{\partial L}{\partial w}, \qquad w \leftarrow w + \Delta w ,
#
# with the learning rate :math:`\eta`. Here are 40 steps with :math:`\eta = 0.1` on this one digit, the
# forward and backward pass written out as above.

eta = 0.1
W1s, b1s, W2s, b2s = W1.clone(), b1.clone(), W2.clone(), b2.clone()
p_before = p.clone()
losses, p_true = [], []
for step in range(40):
    # forward
    h_s = torch.tanh(W1s @ x + b1s)
    z2_s = W2s @ h_s + b2s
    p_s = torch.softmax(z2_s, 0)
    losses.append(-torch.log(p_s[y]).item())
    p_true.append(p_s[y].item())
    # backward
    d2 = p_s - F.one_hot(torch.tensor(y), 10).double()
    d1 = (W2s.T @ d2) * (1 - h_s**2)
    # update: w <- w - eta dL/dw
    W2s -= eta * torch.outer(d2, h_s)
    b2s -= eta * d2
    W1s -= eta * torch.outer(d1, x)
    b1s -= eta * d1
    if step % 5 == 0 or step == 39:
        print(f"step {step:2d}: L = {losses[-1]:.4f}   p_5 = {p_true[-1]:.4f}")
p_after = torch.softmax(W2s @ torch.tanh(W1s @ x + b1s) + b2s, 0)

fig, (ax_loss, ax_p) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
ax_loss.plot(losses, marker="o", ms=3)
ax_loss.set_yscale("log")
ax_loss.set_xlabel("step")
ax_loss.set_ylabel(r"$L = -\log p_y$")
ax_loss.set_title("loss on this digit")
ax_loss.grid(alpha=0.3)
classes = np.arange(10)
ax_p.bar(classes - 0.2, p_before, width=0.4, label="before", color="#9aa5b1")
ax_p.bar(classes + 0.2, p_after, width=0.4, label="after 40 steps", color="#2ca02c")
ax_p.set_xticks(classes)
ax_p.set_xlabel("class")
ax_p.set_ylabel("p")
ax_p.set_title("class probabilities")
ax_p.legend()
plt.show()

# %%
# The loss falls step after step and :math:`p_5` rises towards 1. This network has learned one image, not
# the digit 5: that needs many examples of every class, and a step on each batch of them.
#
# Learning to recognise a 5
# -------------------------
#
# A small MLP of manualbp layers (64 → 64 → 10, tanh) trains on the whole training set with Lightning:
# ``ClassifierModule`` computes the mean cross entropy of each batch of 64 images, its backward runs
# manualbp's hand-written Functions, and Adam (learning rate :math:`10^{-3}`) updates the weights.
# ``manualbp.callbacks.LearningAnimation`` films one 5 throughout, the first 5 of the training set (the
# digit above): before the first step and then at regular intervals it runs that digit forward and backward
# through the network under ``manualbp.trace`` (without touching the training gradients), and when the fit
# ends it writes the frames as a GIF, here into a temporary folder.

import logging  # noqa: E402
import warnings  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

from manualbp.callbacks import LearningAnimation  # noqa: E402
from manualbp.lightning import ClassifierModule  # noqa: E402

for name in ("pytorch_lightning", "lightning_fabric"):  # Lightning's notices ("GPU available: False", ...)
    logging.getLogger(name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # Lightning's, not ours

epochs = 3 if QUICK else 10
torch.manual_seed(0)
model = ClassifierModule(arch="mlp", hidden=(64,), activation="tanh", in_shape=(1, 8, 8))
folder = tempfile.mkdtemp(prefix="manualbp-tutorial-")
# a frame before the first step and one after every 20th step: an epoch is 20 batches of 64 (the last one 42)
film = LearningAnimation(path=os.path.join(folder, "learning.gif"), digit=5, every_n_steps=20)
trainer = pl.Trainer(
    max_epochs=epochs,
    callbacks=[film],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    default_root_dir=folder,
)
trainer.fit(model, datamodule=data)
(result,) = trainer.test(model, datamodule=data, verbose=False)
print(
    f"{epochs} epochs, {trainer.global_step} steps; test accuracy {result['test_acc']:.4f} on {len(data.test_set)} images"
)

# %%
# ``LearningAnimation`` printed the path of its GIF. Here are its first frame (before any step) and its
# last, read back from the file. Each frame shows the four steps of backpropagation for the filmed 5:
# (1) the forward pass, the image and each layer's output; (2) the loss, the class probabilities with the
# true class in green and the training loss of every batch so far; (3) the backward pass, each layer's error
# signal :math:`\delta_l = \partial L/\partial y_l` and :math:`\partial L/\partial x` on the image (blue
# negative, red positive, each map on its own scale, printed under it); (4) the weight update, the size
# :math:`\lVert \Delta W_l \rVert` of the last optimizer step for each layer.

from PIL import Image  # noqa: E402

gif = Image.open(os.path.join(folder, "learning.gif"))
n_frames = gif.n_frames
shown = []
for i in (0, n_frames - 1):
    gif.seek(i)
    shown.append(np.asarray(gif.convert("RGB")))
gif.close()
shutil.rmtree(folder)  # the temporary folder and the GIF in it
height, width, _ = shown[0].shape
fig = plt.figure(figsize=(width / 100, 2 * height / 100 + 0.1), dpi=100)
for row, frame in enumerate(shown):
    ax = fig.add_axes((0, (1 - row) * (height + 10) / (2 * height + 10), 1, height / (2 * height + 10)))
    ax.imshow(frame, interpolation="none")
    ax.axis("off")
print(f"{n_frames} frames of {width} x {height} pixels")
plt.show()

# %%
# Before training, the filmed 5 gets a probability near 0.1 like every other class, and its error signals
# are large. After training, the 5 gets most of the probability, the loss on the digit is small, and so is
# every :math:`\delta_l` (note the scales under the maps): a well-classified example hardly moves the
# weights any more. Unlike the 40 steps above, the network did not learn this one image: it met it once per
# epoch among 1,258 others, and learned what a 5 looks like from all the 5s of the training set. The test
# accuracy above is measured on 359 images it never saw.
#
# ``LearningAnimation(split="val")`` films a 5 of the validation set instead, which the network never trains
# on; on the command line the same callback is ``manualbp fit --trainer.callbacks+=LearningAnimation``.
