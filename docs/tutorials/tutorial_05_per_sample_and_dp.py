r"""
Per-sample gradients and DP-SGD against Opacus
==============================================

A layer's weight gradient is a sum over the batch, :math:`\partial L/\partial W = \sum_n G_n^\top x_n`, and
the layer's backward holds both factors, the error :math:`G_n = \partial L/\partial y_n` and the input
:math:`x_n`, before it sums. manualbp computes per-sample gradients and clips them there, inside the
hand-written backward and in the same backward pass. This tutorial checks the per-sample gradients against
``torch.func``, checks the clipping, shows the property differential privacy rests on, and trains a classifier
on the 8x8 digits with DP-SGD next to Opacus's ``PrivacyEngine`` on the same network with the same settings.
"""

# sphinx_gallery_thumbnail_number = 2
import csv
import logging
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger

import manualbp
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.models import mlp
from manualbp.per_sample import DifferentialPrivacy, PoissonSampler

# sphinx_gallery_start_ignore
# The docs build runs every tutorial in one process: what this one changes globally is restored at its end.
GLOBAL_STATE = (
    torch.get_num_threads(),
    warnings.filters[:],
    {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning_fabric")},
)
# sphinx_gallery_end_ignore

QUICK = os.environ.get("MANUALBP_DOCS_QUICK") == "1"
EPOCHS = 3 if QUICK else 20  # DP-SGD epochs on the digits, 20 Poisson batches each

# Lightning's notices ("GPU available: False", ...) and one deprecation warning of its own are not the subject here.
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

# Networks this small train faster on one thread than on several, above all on a CPU shared with other jobs.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus's hooks on the first layer

# %%
# Per-sample gradients
# --------------------
#
# For a loss :math:`L = \sum_n \ell_n` over a batch, the per-sample gradient of a parameter is the gradient of
# one sample's term, :math:`g_n = \nabla \ell_n`; the batch's gradient is their sum. For a linear layer,
#
# .. math::
#
#     \frac{\partial L}{\partial W} = \sum_n G_n^\top x_n, \qquad g_n(W) = G_n^\top x_n ,
#
# so the per-sample gradients are the terms of the sum before it is taken. A convolution's are the same sum
# over each sample's positions.
#
# A small convolutional network, converted to manual layers, in float64 so that the comparison below shows
# rounding at float64's scale:

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 4, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(4 * 4 * 4, 10),
).double()
manualbp.convert(model)

data = DigitsDataModule()
data.setup("fit")
images, labels = data.train_set[:32]
images = images.double()

with manualbp.per_sample_grads(model, loss_reduction="sum"):
    manualbp.functional.cross_entropy(model(images), labels, reduction="sum").backward()
for name, p in model.named_parameters():
    print(f"{name:9} grad {tuple(p.grad.shape)!s:14} grad_sample {tuple(p.grad_sample.shape)}")

# %%
# ``p.grad_sample`` holds one row per sample, and with ``loss_reduction="sum"`` the rows add up to ``p.grad``.
# The reference is ``torch.func``: the gradient of one sample's loss, ``grad``, mapped over the batch with
# ``vmap``, computed by autograd on the torch twin of the network (``manualbp.to_torch``, the same weights).

twin = manualbp.to_torch(model)
params = {name: p.detach() for name, p in twin.named_parameters()}


def sample_loss(params, image, label):
    logits = torch.func.functional_call(twin, params, (image.unsqueeze(0),))
    return F.cross_entropy(logits, label.unsqueeze(0))


reference = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(params, images, labels)
for name, p in model.named_parameters():
    print(
        f"{name:9} largest |difference| from vmap(grad): {(p.grad_sample - reference[name]).abs().max().item():.1e}"
        f"   rows summed vs p.grad: {(p.grad_sample.sum(0) - p.grad).abs().max().item():.1e}"
    )

# %%
# Clipping each sample's gradient
# -------------------------------
#
# DP-SGD bounds what any one sample can do to a step: each sample's gradient, over all parameters together, is
# scaled to norm at most :math:`C` before the sum,
#
# .. math::
#
#     \tilde g = \sum_n c_n\, g_n, \qquad c_n = \min\Big(1, \frac{C}{\lVert g_n\rVert + 10^{-6}}\Big),
#
# Opacus's clip factor. ``clip_per_sample`` leaves :math:`\tilde g` in ``p.grad`` and the norms
# :math:`\lVert g_n\rVert` in ``clip.norms``. It never forms the (N, \*p.shape) tensors where it can avoid them:
# for a linear layer on rows :math:`\lVert G_n^\top x_n\rVert = \lVert G_n\rVert\,\lVert x_n\rVert`, and each
# weight gradient is then one reduction of the weighted errors, :math:`(c \odot G)^\top x`.
#
# Clipped here to :math:`C = 5` (the untrained network's per-sample norms lie around 4 to 6), and checked
# against clipping the per-sample gradients above by hand:

C = 5.0
model.zero_grad()
with manualbp.clip_per_sample(model, max_grad_norm=C, loss_reduction="sum") as clip:
    manualbp.functional.cross_entropy(model(images), labels, reduction="sum").backward()

norms = torch.cat([p.grad_sample.flatten(1) for p in model.parameters()], 1).norm(dim=1)  # ‖g_n‖, from above
factors = (C / (norms + 1e-6)).clamp(max=1.0)
print(
    f"largest |difference| of clip.norms from the norms of grad_sample: {(clip.norms - norms).abs().max().item():.1e}"
)
for name, p in model.named_parameters():
    by_hand = torch.einsum("n,n...->...", factors, p.grad_sample)
    print(
        f"{name:9} clipped sum, largest |difference| from clipping by hand: {(p.grad - by_hand).abs().max().item():.1e}"
    )
print(f"{int((norms > C).sum())} of {len(norms)} samples clipped; norms from {norms.min():.3f} to {norms.max():.3f}")

# %%
# Each bar is one sample's gradient norm; those above :math:`C` are scaled down to it, the others pass
# unchanged.

order = norms.argsort()
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.bar(range(len(norms)), norms[order], color="0.75", label=r"$\|g_n\|$ before clipping")
ax.bar(range(len(norms)), (factors * norms)[order], color="tab:blue", label=r"$c_n \|g_n\|$ after clipping")
ax.axhline(C, color="tab:red", ls="--", lw=1, label=f"C = {C}")
ax.set_xlabel("sample (sorted by norm)")
ax.set_ylabel("gradient norm")
ax.set_ylim(0, 1.3 * norms.max().item())
ax.legend(loc="upper left", ncol=3, fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The DP invariant
# ----------------
#
# Differential privacy compares the step on a batch with the step on the same batch less one sample. Clipping
# makes the difference of the two sums exactly that sample's clipped gradient, whose norm is at most
# :math:`C`, whatever the sample holds:
#
# .. math::
#
#     \Big\lVert \sum_n c_n g_n - \sum_{n \ne k} c_n g_n \Big\rVert = c_k \lVert g_k\rVert \le C .
#
# The Gaussian noise of DP-SGD is scaled to this bound (std :math:`\sigma C`). To see it numerically, the batch
# gets one outlier, a sample with its pixels multiplied by 100, and each sample is left out in turn: the
# clipped sum moves by at most C, while the plain sum moves by the full gradient of the left-out sample.


def flat_grad(batch_images, batch_labels, clip_norm=None) -> torch.Tensor:
    """All parameters' gradient of the summed loss, flattened: plain, or the per-sample clipped sum."""
    model.zero_grad()
    loss = lambda: manualbp.functional.cross_entropy(model(batch_images), batch_labels, reduction="sum")  # noqa: E731
    if clip_norm is None:
        loss().backward()
    else:
        with manualbp.clip_per_sample(model, max_grad_norm=clip_norm, loss_reduction="sum"):
            loss().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


batch_images, batch_labels = images.clone(), labels.clone()
batch_images[0] *= 100  # the outlier
full_plain, full_clipped = flat_grad(batch_images, batch_labels), flat_grad(batch_images, batch_labels, C)
moved_plain, moved_clipped = [], []
for k in range(len(batch_labels)):
    keep = torch.arange(len(batch_labels)) != k
    moved_plain.append((full_plain - flat_grad(batch_images[keep], batch_labels[keep])).norm().item())
    moved_clipped.append((full_clipped - flat_grad(batch_images[keep], batch_labels[keep], C)).norm().item())
print(f"leaving out the outlier moves the plain sum by {moved_plain[0]:.1f}, the clipped sum by {moved_clipped[0]:.6f}")
print(f"largest move of the clipped sum over all {len(moved_clipped)} samples: {max(moved_clipped):.6f} (C = {C})")

# %%
# DP-SGD on the digits
# --------------------
#
# One DP-SGD step (Abadi et al. 2016), as Opacus's ``DPOptimizer`` takes it: draw a batch by Poisson sampling
# (each image in with probability :math:`q`), clip each sample's gradient to :math:`C` and sum, add Gaussian
# noise, divide by the expected batch size :math:`B = q\,|D|`:
#
# .. math::
#
#     \bar g = \frac{1}{B}\Big(\sum_{n \in \text{batch}} c_n g_n + \xi\Big), \qquad
#     \xi \sim \mathcal N\big(0, \sigma^2 C^2 I\big).
#
# Opacus's RDP accountant turns :math:`(\sigma, q)` and the number of steps into :math:`\varepsilon`, the
# privacy spent at a chosen :math:`\delta`.
#
# ``ClassifierModule(dp=DifferentialPrivacy(...))`` trains this way: its training loader is replaced by a
# Poisson sampler with :math:`q` = 1 / batches per epoch, the backward runs inside ``clip_per_sample``, the
# noise is added before each optimizer step, and ``epsilon`` is logged every epoch. ``seed=0`` makes the noise
# reproducible; without a seed it is drawn from fresh entropy every run. The network is ``mlp(hidden=(128,))``
# (Flatten, Linear 64 -> 128, ReLU, Linear 128 -> 10), trained with Adam at lr 1e-3, :math:`\sigma = 1`,
# :math:`C = 1`, :math:`\delta = 10^{-5}`.

SIGMA, MAX_GRAD_NORM, DELTA, HIDDEN = 1.0, 1.0, 1e-5, (128,)


def metrics_by_epoch(log_dir: str) -> dict[str, list[float]]:
    """val_acc and epsilon per epoch from a run's metrics.csv (Lightning's CSV logger)."""
    epochs: dict[int, dict[str, float]] = {}
    with open(Path(log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key in ("val_acc", "epsilon"):
                if row.get(key):
                    epochs.setdefault(int(row["epoch"]), {})[key] = float(row[key])
    listed = [epochs[e] for e in sorted(epochs)]
    return {key: [e[key] for e in listed if key in e] for key in ("val_acc", "epsilon")}


def fit_manualbp(dp: DifferentialPrivacy | None) -> dict:
    pl.seed_everything(0, verbose=False)  # the manualbp command's default seed: the initial weights
    classifier = ClassifierModule(hidden=HIDDEN, in_shape=(1, 8, 8), dp=dp)
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(
            max_epochs=EPOCHS,
            logger=CSVLogger(folder),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=10,
        )
        trainer.fit(classifier, DigitsDataModule())
        (test,) = trainer.test(classifier, DigitsDataModule(), verbose=False)
        return {**metrics_by_epoch(trainer.logger.log_dir), "test_acc": test["test_acc"], "net": classifier.net}


manual = fit_manualbp(DifferentialPrivacy(noise_multiplier=SIGMA, max_grad_norm=MAX_GRAD_NORM, delta=DELTA, seed=0))
print("val_acc per epoch:", " ".join(f"{a:.3f}" for a in manual["val_acc"]))
print("epsilon per epoch:", " ".join(f"{e:.2f}" for e in manual["epsilon"]))

# %%
# The same with Opacus
# --------------------
#
# The Opacus side follows ``experiments/dp_compare.py`` (which runs this comparison on MNIST): the same network
# built from ``torch.nn`` after the same seed (both backends initialise alike), the same data module, Adam at
# lr 1e-3, and ``PrivacyEngine.make_private`` with the same :math:`\sigma`, :math:`C` and accountant. Two
# things are handed over so that both runs draw the same random numbers: the Poisson batches (manualbp's
# ``PoissonSampler``, seeded with the data module's seed, batch :math:`t` drawn at step :math:`t`;
# ``poisson_sampling=False`` keeps Opacus from putting its own sampler in its place) and the noise (a
# generator seeded 0, which draws for the parameters in the same order). With the same batches and noise the
# two runs should differ only by floating-point rounding.
#
# Opacus computes the per-sample gradients with hooks on the torch.nn layers (``grad_sample_mode="hooks"``),
# materialising every (N, \*p.shape) tensor, and clips them in its optimizer.

from opacus import PrivacyEngine  # noqa: E402


def accuracy(net: torch.nn.Module, loader) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum((net(x).argmax(1) == y).sum().item() for x, y in loader)
    net.train()
    return correct / len(loader.dataset)


digits = DigitsDataModule()
digits.setup("fit")
digits.setup("test")
torch.manual_seed(0)
net = mlp(hidden=HIDDEN, in_shape=(1, 8, 8), backend="autograd")
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
loader = digits.train_dataloader()
steps_taken = 0
sampler = PoissonSampler(
    len(loader.dataset), 1 / len(loader), len(loader), lambda: steps_taken, seed=loader.generator.initial_seed()
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Opacus's advice on secure_mode and on its own sampling
    engine = PrivacyEngine(accountant="rdp")
    net, optimizer, train_loader = engine.make_private(
        module=net,
        optimizer=optimizer,
        data_loader=torch.utils.data.DataLoader(loader.dataset, batch_sampler=sampler),
        noise_multiplier=SIGMA,
        max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False,
        noise_generator=torch.Generator().manual_seed(0),
        grad_sample_mode="hooks",
    )
opacus = {"val_acc": [], "epsilon": []}
for _ in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        steps_taken += 1
    opacus["val_acc"].append(accuracy(net, digits.val_dataloader()))
    opacus["epsilon"].append(engine.get_epsilon(DELTA))
opacus["test_acc"] = accuracy(net, digits.test_dataloader())

print("epoch   val_acc manualbp  val_acc Opacus   epsilon manualbp  epsilon Opacus")
for epoch in range(EPOCHS):
    print(
        f"{epoch + 1:5d}   {manual['val_acc'][epoch]:16.4f}  {opacus['val_acc'][epoch]:14.4f}"
        f"   {manual['epsilon'][epoch]:16.3f}  {opacus['epsilon'][epoch]:14.3f}"
    )

# %%
# The test accuracy of the last epoch's weights, with the same network trained without DP for scale:

plain = fit_manualbp(None)
print(f"{'run':<22} {'test_acc':>8} {'epsilon':>8}")
print(f"{'manualbp DP-SGD':<22} {manual['test_acc']:8.4f} {manual['epsilon'][-1]:8.3f}")
print(f"{'Opacus PrivacyEngine':<22} {opacus['test_acc']:8.4f} {opacus['epsilon'][-1]:8.3f}")
print(f"{'manualbp, no DP':<22} {plain['test_acc']:8.4f} {'-':>8}")
print(
    "largest difference of val_acc between manualbp and Opacus over the epochs:",
    f"{max(abs(a - b) for a, b in zip(manual['val_acc'], opacus['val_acc'])):.1e}",
)
opacus_weights = dict(net._module.named_parameters())  # the network inside Opacus's GradSampleModule
print(
    "largest difference of the final weights:",
    f"{max((p - opacus_weights[n]).abs().max().item() for n, p in manual['net'].named_parameters()):.1e}",
)

# %%
# The two DP curves lie on each other, and so do the :math:`\varepsilon` curves: the accountant sees the same
# :math:`(\sigma, q)` for the same number of steps. :math:`\varepsilon` grows with every epoch, roughly as the
# square root of the steps taken, while the accuracy levels off below the run without DP: the price of the
# clipping and the noise on 1,258 training images.

epochs = range(1, EPOCHS + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
left.plot(epochs, plain["val_acc"], color="0.6", marker="o", ms=3, label="manualbp, no DP")
left.plot(epochs, manual["val_acc"], color="tab:blue", marker="o", ms=5, label="manualbp DP-SGD")
left.plot(epochs, opacus["val_acc"], color="tab:orange", marker="x", ms=6, ls="--", label="Opacus DP-SGD")
left.set(xlabel="epoch", ylabel="validation accuracy", title=f"accuracy (σ = {SIGMA}, C = {MAX_GRAD_NORM})")
right.plot(epochs, manual["epsilon"], color="tab:blue", marker="o", ms=5, label="manualbp")
right.plot(epochs, opacus["epsilon"], color="tab:orange", marker="x", ms=6, ls="--", label="Opacus")
right.set(xlabel="epoch", ylabel="ε", title=f"privacy spent, ε at δ = {DELTA:.0e}".replace("e-0", "e-"))
right.set_ylim(bottom=0)
for ax in (left, right):
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %%
# Beyond this page
# ----------------
#
# * **Command line.** ``manualbp fit --model.dp.noise_multiplier=1.0 --model.dp.max_grad_norm=1.0
#   --model.dp.delta=1e-5 --model.dp.seed=0`` is the run above with the default network, ``mlp(800)``.
#   Checkpoints carry the accountant and the noise generator's state, so a resumed fit continues both.
# * **secure_mode.** ``DifferentialPrivacy(..., secure_mode=True)`` (``--model.dp.secure_mode=true``) draws the
#   noise and the Poisson batches from the operating system's cryptographically secure generator
#   (``os.urandom``), as Opacus's ``secure_mode`` does, with Opacus's mitigation of floating-point attacks on
#   the Gaussian (each coordinate the sum of four draws, halved). Nothing of it can be replayed, so a seed is
#   refused with it, and it is slower: on this project's 2-core CPU the noise for 1.3 million parameters takes
#   about 180 ms instead of 6. Without it, as here, the noise comes from torch's pseudo-random generator, fine
#   for experiments but not for a privacy guarantee against an attacker who could reconstruct its state.
# * **Several processes.** Under Lightning's DDP (``--trainer.strategy=ddp --trainer.devices=2``) a step is the
#   single-process step on the union of the ranks' batches: every rank draws the same Poisson batch and keeps
#   its share, the ranks' clipped sums are added up by an all-reduce, rank 0 alone adds the noise, and every
#   rank divides by the global expected batch size, so the weights stay identical on every rank.
# * **Other layers.** The same contexts work on Conv2d, LayerNorm, BatchNorm in eval mode and the recurrent
#   layers, and under any learning rule; BatchNorm in training mode mixes the samples of a batch and is refused
#   with ``PerSampleError``.

# sphinx_gallery_start_ignore
torch.set_num_threads(GLOBAL_STATE[0])
warnings.filters[:] = GLOBAL_STATE[1]
for name, level in GLOBAL_STATE[2].items():
    logging.getLogger(name).setLevel(level)
# sphinx_gallery_end_ignore
