r"""
torchvision's zoo, converted
============================

:func:`manualbp.convert` turns every classification model of torchvision with at most 100M parameters fully
manual: ResNets, MobileNets, EfficientNets, ConvNeXts, Swin transformers, MaxViT, ViTs. This tutorial converts a
ConvNeXt and checks it against the original, reads the backward of the one parameter its block applies by hand
(the layer scale), runs a 1-d and a 3-d convolution through the one convolution Function, swaps a ResNet's batch
norm for group norm to clip per-sample gradients, and plots how far each converted model of the zoo is from its
original (``experiments/results/zoo.json``).
"""

import copy
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torchvision

import manualbp
import manualbp.functional as MF
from manualbp.convert import layer_summary
from manualbp.verify import seeded

# %%
# A ConvNeXt, converted
# ---------------------
#
# ``strict=True`` raises if any layer that computes would stay torch's. ConvNeXt's block (``CNBlock``) owns a
# parameter, ``layer_scale``, that its ``forward`` multiplies in with a plain tensor op, so the block itself
# becomes a manualbp twin of torchvision's class (same parameters and buffers, same state dict).

torch.manual_seed(0)
original = torchvision.models.convnext_tiny(num_classes=10).double()
model = manualbp.convert(copy.deepcopy(original), strict=True)
print(type(model.features[1][0]))
print("left to torch.nn:", dict(layer_summary(model)["torch"]))

# %%
# Its gradients are the original's. Both run in training mode from one seed, so the stochastic depth drops the
# same blocks on both sides.

x, target = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 7])
for net in (model, original):
    torch.nn.functional.cross_entropy(seeded(net)(x), target).backward()
worst = max(
    ((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12)).item()
    for p, q in zip(model.parameters(), original.parameters())
)
print(f"largest relative difference of a parameter's gradient: {worst:.1e}")

# %%
# The layer scale's backward
# --------------------------
#
# :math:`y = \gamma \odot x` with :math:`\gamma` of shape :math:`(C, 1, 1)`: the input's gradient is the output's
# scaled, the scale's is a sum over everything it was broadcast over, and per sample (for DP-SGD) the same sum
# without the batch.

print(MF.LayerScaleFunction.__doc__)

# %%
# One convolution over the spatial rank
# -------------------------------------
#
# ``Conv1d``, ``Conv2d`` and ``Conv3d`` are one Function, :class:`manualbp.functional.ConvFunction`, whose forward
# and the two primitives of its backward (a transposed convolution for the input, a correlation for the weight)
# are picked by the weight's rank.

for layer, shape in ((manualbp.nn.Conv1d(3, 4, 3), (2, 3, 9)), (manualbp.nn.Conv3d(3, 4, 3), (2, 3, 5, 5, 5))):
    y = layer(torch.randn(shape))
    print(type(layer).__name__, tuple(y.shape), type(y.grad_fn).__name__)

# %%
# Batch norm to group norm, for DP-SGD
# ------------------------------------
#
# Batch statistics mix the samples, so a model with batch norm in training has no per-sample gradients.
# :func:`manualbp.per_sample.batch_norm_to_group_norm` swaps each for a group norm, as Opacus's
# ``ModuleValidator.fix`` does; the model stays manual, and :func:`manualbp.clip_per_sample` clips each image's
# gradient.

resnet = manualbp.per_sample.batch_norm_to_group_norm(
    manualbp.convert(torchvision.models.resnet18(num_classes=10), strict=True)
)
print(type(resnet.bn1).__name__, resnet.bn1.num_groups, "groups")
images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
with manualbp.clip_per_sample(resnet, max_grad_norm=1.0, loss_reduction="mean") as clip:
    torch.nn.functional.cross_entropy(resnet(images), labels).backward()
print("per-image gradient norms before clipping:", [round(n, 2) for n in clip.norms.tolist()])

# %%
# The whole zoo
# -------------
#
# ``experiments/zoo.py`` converts every model and compares it with the original in float64: the worst relative
# difference of any parameter's gradient, in evaluation and in training mode. The plot reads its results file.

results = Path(manualbp.__file__).resolve().parents[1] / "experiments" / "results"  # the repository's
zoo = json.loads((results / "zoo.json").read_text())
rows = sorted(zoo["rows"], key=lambda r: r["model"])
fig, ax = plt.subplots(figsize=(7, 9))
positions = range(len(rows))
for mode, marker in (("eval", "o"), ("train", "x")):
    ax.scatter([max(r[mode]["gradients"], 1e-18) for r in rows], positions, marker=marker, label=mode, s=14)
ax.set_yticks(list(positions), [r["model"] for r in rows], fontsize=6)
ax.set_xscale("log")
ax.axvline(1e-8, color="grey", linestyle="--", label="tolerance 1e-8")
ax.set_xlabel("worst relative difference of a parameter's gradient (float64)")
ax.legend(loc="lower right")
fig.tight_layout()
print(
    f"{sum(r['fully_manual'] for r in rows)} of {len(rows)} models fully manual, {sum(r['equal'] for r in rows)} equal"
)
