r"""
Attention by hand, and a vision transformer
===========================================

:func:`manualbp.functional.scaled_dot_product_attention` has torch's semantics and a backward written out the way
FlashAttention-2 derives it: the forward keeps the queries, keys and values, the output and one log-sum-exp per
row, never the :math:`L \times S` matrix of probabilities, and the backward recomputes the probabilities block by
block of keys. On it sit :class:`manualbp.nn.MultiheadAttention`, the transformer layers and torchvision's
vision transformer, all manual after :func:`manualbp.convert`. This tutorial derives the backward, checks it
against autograd, looks at what is saved, converts a ViT and trains the ``--model.arch=vit`` network on the
digits, then takes per-sample gradients of its class token.
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
from torchvision.models import vit_b_16

import manualbp
import manualbp.functional as MF
from manualbp.convert import layer_summary
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
EPOCHS = 2 if QUICK else 30  # epochs of the ViT on the digits, 20 batches of 64 each

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
torch.set_num_threads(1)

# %%
# The forward pass
# ----------------
#
# For one head, queries :math:`Q` (:math:`L \times E`), keys :math:`K` (:math:`S \times E`) and values
# :math:`V` (:math:`S \times E_v`):
#
# .. math::
#
#     S = s\, Q K^\top + M, \qquad P = \mathrm{softmax}_{\text{rows}}(S), \qquad O = P V
#
# with :math:`s = 1/\sqrt{E}` and :math:`M` the mask (0 where a key takes part, :math:`-\infty` where not).
# The softmax of row :math:`i` is :math:`P_{ij} = e^{S_{ij} - \ell_i}` with
# :math:`\ell_i = \log \sum_j e^{S_{ij}}`, the row's log-sum-exp: given :math:`\ell`, any block of
# :math:`P` can be recomputed from :math:`Q` and that block of :math:`K`, so the forward saves
# :math:`\ell` (L numbers) instead of :math:`P` (:math:`L \times S`).

torch.manual_seed(0)
L, S, E = 5, 7, 4
q, k, v = (torch.randn(1, 1, n, E, dtype=torch.float64, requires_grad=True) for n in (L, S, S))

scores = q @ k.transpose(-2, -1) / E**0.5
lse = scores.logsumexp(-1, keepdim=True)
p = (scores - lse).exp()
o = p @ v
print("output by hand vs manualbp:", (o - MF.scaled_dot_product_attention(q, k, v)).abs().max().item())

# %%
# The backward pass, step by step
# -------------------------------
#
# With :math:`dO = \partial L/\partial O` given, the chain rule through :math:`O = PV` gives
# :math:`dV = P^\top dO` and :math:`dP = dO\, V^\top`. Through the softmax of each row,
# :math:`dS_{ij} = P_{ij} (dP_{ij} - \sum_k P_{ik} dP_{ik})`, and the sum is a number per row that needs no
# :math:`P` at all: :math:`\sum_k P_{ik} dP_{ik} = \sum_k P_{ik} (dO\, V^\top)_{ik} = (dO \odot O)_i`
# summed over the features, called :math:`D_i`. So
#
# .. math::
#
#     D = \mathrm{rowsum}(dO \odot O), \qquad dS = P \odot (dP - D), \qquad
#     dQ = s\, dS\, K, \qquad dK = s\, dS^\top Q
#
# Each needs only one block of keys' columns of :math:`P` and :math:`dS` at a time, which is how manualbp's
# backward runs: its extra memory does not grow as :math:`L \cdot S`.

grad_o = torch.randn_like(o)
d = (grad_o * o).sum(-1, keepdim=True)
grad_v = p.transpose(-2, -1) @ grad_o
grad_p = grad_o @ v.transpose(-2, -1)
grad_s = p * (grad_p - d)
grad_q = grad_s @ k / E**0.5
grad_k = grad_s.transpose(-2, -1) @ q / E**0.5

manual = torch.autograd.grad(MF.scaled_dot_product_attention(q, k, v), (q, k, v), grad_o)
autograd = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad_o)
for name, by_hand, mine, torchs in zip("QKV", (grad_q, grad_k, grad_v), manual, autograd):
    print(
        f"d{name}: by hand vs manualbp {(by_hand - mine).abs().max().item():.1e}, "
        f"manualbp vs autograd {(mine - torchs).abs().max().item():.1e}"
    )

# %%
# What the forward keeps
# ----------------------
#
# A saved-tensor hook lists what each implementation keeps for its backward. torch's math path (the
# composite of matmul and softmax) keeps the probabilities; manualbp keeps the inputs, the output and the
# log-sum-exp, like torch's fused CPU kernel.


def saved_shapes(attention, n: int) -> list[tuple[int, ...]]:
    shapes = []
    x = [torch.randn(1, 2, n, 16, requires_grad=True) for _ in range(3)]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        attention(*x)
    return sorted(set(shapes))


def math_path(*x: torch.Tensor) -> torch.Tensor:
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(*x)


print("manualbp keeps:      ", saved_shapes(MF.scaled_dot_product_attention, 512))
print("torch's math path:   ", saved_shapes(math_path, 512))

# %%
# A vision transformer, converted
# -------------------------------
#
# torchvision's :class:`~torchvision.models.VisionTransformer` owns two parameters that no layer holds: the
# class token, put in front of every image's patches, and the position embedding, added to every image.
# manualbp's twins of ``VisionTransformer`` and its ``Encoder`` apply them with hand-written Functions
# (:func:`~manualbp.functional.cat_token`, :func:`~manualbp.functional.add_parameter`), so ``convert`` leaves
# nothing to autograd. Here ``vit_b_16`` on 32 x 32 images (its 86 million parameters, untrained):

reference = vit_b_16(image_size=32).eval()
manual_vit = manualbp.convert(vit_b_16(image_size=32), strict=True).eval()
manual_vit.load_state_dict(reference.state_dict())
print(dict(layer_summary(manual_vit)["manual"]))
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    print("largest difference from torchvision's output:", (manual_vit(x) - reference(x)).abs().max().item())
del reference, manual_vit

# %%
# Training ``--model.arch=vit`` on the digits
# -------------------------------------------
#
# The built-in vision transformer (:func:`manualbp.models.vit`: 4 x 4 patches of the image, width 64, 4 pre-norm
# blocks of 4 heads) trains with Adam under a one-cycle schedule, as ``manualbp fit --model.arch=vit`` does. On
# the 8 x 8 digits a patch is 2 x 2 pixels.

pl.seed_everything(0, verbose=False)
model = ClassifierModule(arch="vit", in_shape=(1, 8, 8), num_classes=10)
with tempfile.TemporaryDirectory() as root:
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        default_root_dir=root,
        logger=pl.loggers.CSVLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = DigitsDataModule()
    trainer.fit(model, data)
    (tested,) = trainer.test(model, data, verbose=False)
    history = trainer.logger.experiment.metrics
print(f"test accuracy after {EPOCHS} epochs: {tested['test_acc']:.4f}")

val = [(m["epoch"], m["val_acc"]) for m in history if "val_acc" in m]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([e + 1 for e, _ in val], [a for _, a in val], marker="o")
ax.set_xlabel("epoch")
ax.set_ylabel("validation accuracy")
ax.set_title("The manual vision transformer on the 8 x 8 digits")
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %%
# Per-sample gradients of the class token
# ---------------------------------------
#
# Each image's gradient of the class token is its own row of the backward's sum
# :math:`\partial L/\partial c = \sum_n \partial L/\partial y_n[0]`, so :func:`manualbp.per_sample_grads` gives
# it without running the model once per image, or vmapping it. A loop over single images checks it.

net = model.net
images, labels = next(iter(data.test_dataloader()))
images, labels = images[:16], labels[:16]
with manualbp.per_sample_grads(net, loss_reduction="sum"):
    F.cross_entropy(net(images), labels, reduction="sum").backward()
per_sample = net.class_token.grad_sample
loop = torch.stack(
    [
        torch.autograd.grad(F.cross_entropy(net(images[i : i + 1]), labels[i : i + 1]), net.class_token)[0]
        for i in range(len(labels))
    ]
)
print("class token per-sample gradients", tuple(per_sample.shape))
print(f"largest |difference| from one backward per image: {(per_sample - loop).abs().max().item():.1e}")

# sphinx_gallery_start_ignore
torch.set_num_threads(GLOBAL_STATE[0])
warnings.filters[:] = GLOBAL_STATE[1]
for name, level in GLOBAL_STATE[2].items():
    logging.getLogger(name).setLevel(level)
# sphinx_gallery_end_ignore
