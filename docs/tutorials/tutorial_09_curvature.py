r"""
Curvature from the hand-written backward
========================================

A gradient is one column sent back through the network: :math:`\partial L/\partial f`. Curvature is a matrix
sent back the same way. The loss Hessian with respect to the output, :math:`\partial^2 L/\partial f^2`, has a
symmetric factor :math:`S` with :math:`C` columns, one per class. Each column goes back through the same
hand-written backward functions, batched with ``vmap``. Each layer then combines what arrives with its input, as it
does for a gradient. :func:`manualbp.curvature` does this and leaves BackPACK's quantities on every parameter.

This tutorial:

- checks the diagonal of the generalised Gauss-Newton matrix (GGN) against brute force, on a network BackPACK
  cannot handle (GELU and LayerNorm);
- checks the same quantities against BackPACK on a network it can handle;
- looks at a layer's Kronecker factors;
- tests that the Monte-Carlo estimate is unbiased;
- reads the benchmark and the K-FAC experiment from ``experiments/results``.
"""

# sphinx_gallery_thumbnail_number = 1
import copy
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.func import functional_call, hessian, jacrev

import manualbp
import manualbp.functional as MF

torch.manual_seed(0)

# %%
# The diagonal GGN of a network with GELU and LayerNorm
# -----------------------------------------------------
#
# The GGN of a parameter :math:`\theta` is :math:`\sum_n J_n^\top H_n J_n`, where :math:`J_n` is the Jacobian of
# sample :math:`n`'s output with respect to :math:`\theta` and :math:`H_n` is the loss Hessian with respect to
# that output. Brute force forms both with ``torch.func``: one Jacobian per sample, and the full Hessian of the
# loss. manualbp's answer comes from one backward of :math:`C` columns.

torch_model = torch.nn.Sequential(
    torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
).double()
model = manualbp.convert(copy.deepcopy(torch_model))
x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 4, (8,))

with manualbp.curvature(model, "diag_ggn_exact", "kflr"):
    MF.cross_entropy(model(x), y).backward()

params = {k: v.detach() for k, v in torch_model.named_parameters()}
hess = hessian(lambda f: torch.nn.functional.cross_entropy(f, y))(torch_model(x).detach())
worst = 0.0
for name, p in model.named_parameters():
    expected = torch.zeros_like(p)
    for n in range(x.shape[0]):
        jac = jacrev(lambda q, n=n: functional_call(torch_model, q, (x[n : n + 1],))[0])(params)[name]
        flat = jac.reshape(4, -1)
        expected += (flat.t() @ hess[n, :, n, :] @ flat).diagonal().reshape(p.shape)
    worst = max(worst, ((p.diag_ggn_exact - expected).abs().max() / expected.abs().max()).item())
print(f"largest relative difference from brute force over all parameters: {worst:.1e}")

# %%
# The same network with BackPACK raises: it has no extension for GELU or LayerNorm. A parameter without Kronecker
# structure (LayerNorm's :math:`\gamma`) gets its whole GGN block as the one factor, as a bias does.

print([tuple(f.shape) for f in model[0].weight.kflr], tuple(model[2].weight.kflr[0].shape))

# %%
# Equal to BackPACK where BackPACK computes it
# --------------------------------------------
#
# On a ReLU network both libraries compute every quantity. The Monte-Carlo ones draw from torch's generator in
# the same order, so with the same seed they agree too.

from backpack import backpack, extend, extensions  # noqa: E402

relu_net = torch.nn.Sequential(
    torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4)
).double()
names = {"diag_ggn_exact": "DiagGGNExact", "diag_h": "DiagHessian", "kfac": "KFAC", "variance": "Variance"}

theirs = extend(copy.deepcopy(relu_net))
default = torch.get_default_dtype()
torch.set_default_dtype(torch.float64)  # BackPACK makes some of its own tensors in the default dtype
torch.manual_seed(1)
with backpack(*(getattr(extensions, cls)() for cls in names.values())):
    extend(torch.nn.CrossEntropyLoss())(theirs(x), y).backward()
torch.set_default_dtype(default)

ours = manualbp.convert(copy.deepcopy(relu_net))
torch.manual_seed(1)
with manualbp.curvature(ours, *names):
    MF.cross_entropy(ours(x), y).backward()


def largest_difference(a, b):
    if isinstance(a, list):
        return max(largest_difference(u, v) for u, v in zip(a, b))
    return (a - b).abs().max().item()


for quantity in names:
    gap = max(
        largest_difference(getattr(p, quantity), getattr(q, quantity))
        for p, q in zip(ours.parameters(), theirs.parameters())
    )
    print(f"{quantity:15s} largest difference from BackPACK: {gap:.1e}")

# %%
# Kronecker factors
# -----------------
#
# KFAC approximates a layer's GGN block by :math:`B \otimes A`. Here :math:`A` is the second moment of the layer's
# input and :math:`B` that of the output error the columns bring back. Both are small matrices, one per side of
# the weight.

B, A = ours[2].weight.kfac
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, matrix, title in zip(axes, (B, A), ("B: output side (12 x 12)", "A: input side (12 x 12)")):
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
fig.suptitle("KFAC factors of the second layer")
fig.tight_layout()

# %%
# The Monte-Carlo estimate is unbiased
# ------------------------------------
#
# ``diag_ggn_mc`` sends back :math:`M` sampled columns instead of :math:`C`. Their average over many draws
# approaches the exact diagonal, within its standard error.

with manualbp.curvature(ours, "diag_ggn_exact"):
    MF.cross_entropy(ours(x), y).backward()
exact = torch.cat([p.diag_ggn_exact.flatten() for p in ours.parameters()])
draws = []
for _ in range(200):
    with manualbp.curvature(ours, "diag_ggn_mc"):
        MF.cross_entropy(ours(x), y).backward()
    draws.append(torch.cat([p.diag_ggn_mc.flatten() for p in ours.parameters()]))
draws = torch.stack(draws)
error = draws.std(0) / draws.shape[0] ** 0.5
informative = error > 0
z = ((draws.mean(0) - exact).abs() / error)[informative]
print(f"largest |mean - exact| in standard errors, over {int(informative.sum())} entries: {z.max():.2f}")

# %%
# Speed and memory, and a K-FAC optimizer
# ---------------------------------------
#
# ``experiments/bench_curvature.py`` times each quantity against BackPACK's extension and curvlinops, in one
# process, interleaved. ``experiments/kfac_mnist.py`` trains LeNet-5 on the MNIST subset with SGD, Adam and SGD
# preconditioned by K-FAC (``manualbp.callbacks.KFACPreconditioner``, the factors from this context). The
# numbers below are read from their JSON files; the {doc}`results page <../results>` has the full tables.

RESULTS = Path(manualbp.__file__).resolve().parents[1] / "experiments" / "results"
bench = json.loads((RESULTS / "bench_curvature.json").read_text())
cells = {(r["model"], r["batch"], r["quantity"], r["method"]): r for r in bench["rows"]}
print(f"{'model':11s} {'batch':>5s} {'quantity':17s} {'manualbp ms':>11s} {'BackPACK ms':>11s} {'ratio':>6s}")
for (model, batch, quantity, method), row in cells.items():
    theirs = cells.get((model, batch, quantity, "backpack"))
    if method != "manualbp" or theirs is None or "ok" not in (row["status"], theirs["status"]):
        continue
    if row["status"] == theirs["status"] == "ok":
        ratio = row["ms"] / theirs["ms"]
        print(f"{model:11s} {batch:5d} {quantity:17s} {row['ms']:11.1f} {theirs['ms']:11.1f} {ratio:6.2f}")

# %%
# The K-FAC experiment: validation accuracy of each optimizer against training steps.

kfac = json.loads((RESULTS / "kfac_mnist.json").read_text())
fig, ax = plt.subplots(figsize=(6, 3.5))
for summary, color in zip(kfac["summary"], ("C0", "C1", "C2")):
    runs = [r for r in kfac["runs"] if r["optimizer"] == summary["optimizer"]]
    for i, run in enumerate(runs):
        label = f"{summary['optimizer']} (lr {summary['lr']}): median {summary['median_steps_to_target']} steps"
        steps = [h["step"] for h in run["history"]]
        ax.plot(steps, [h["val_acc"] for h in run["history"]], color=color, alpha=0.7, label=None if i else label)
ax.axhline(kfac["meta"]["options"]["target"], color="grey", lw=0.8, ls="--")
ax.set_xlabel("training step")
ax.set_ylabel("validation accuracy")
ax.set_ylim(0.8, 1.0)
ax.legend()
fig.tight_layout()
