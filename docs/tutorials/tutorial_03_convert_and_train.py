"""
Convert a torchvision model and train it with the Lightning CLI
===============================================================

``manualbp.convert(model)`` replaces every layer of an existing ``torch.nn`` model that has a manualbp twin
by that twin, in place, sharing the same Parameters. This page converts torchvision's ResNet-18, shows
which layers became manual, checks that the converted model computes the same outputs and gradients as the
original, and then trains it on the bundled 8x8 digits with the ``manualbp`` command (a LightningCLI), run
here from Python.
"""

# %%
# The model, in a module the command can import
# ---------------------------------------------
#
# ``torchvision.models.resnet18(num_classes=10)`` expects images of 3 channels; the digits have one. The
# usual adaptation replaces the first convolution by one that takes a single channel. The ``manualbp``
# command builds a network of your own from its import path (``--model.net=package.module.Class``), so the
# class goes into a module. On this page the module is a file in a temporary folder put on ``sys.path``; in a
# project it is a module of your package.

import copy
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import manualbp
from manualbp.convert import layer_summary
from manualbp.data import DigitsDataModule

QUICK = os.environ.get("MANUALBP_DOCS_QUICK") == "1"  # a few batches instead of an epoch, for CI

SOURCE = '''\
import torch
import torchvision


class DigitsResNet18(torch.nn.Module):
    """torchvision's ResNet-18 for images of one channel (N, 1, H, W) -> (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.resnet = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        self.resnet.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(x)
'''

folder = Path(tempfile.mkdtemp(prefix="manualbp-tutorial-"))
(folder / "digits_models.py").write_text(SOURCE)
sys.path.insert(0, str(folder))

from digits_models import DigitsResNet18  # noqa: E402

torch.manual_seed(0)
net = DigitsResNet18()
print(f"DigitsResNet18: {sum(p.numel() for p in net.parameters()):,} parameters")
print(net.resnet.layer1[0])

# %%
# Converting it
# -------------
#
# A deep copy keeps the original for the comparison below. ``manualbp.convert`` swaps the layers in place and
# returns the model; the new layers share the old ones' Parameter and buffer objects, so an optimizer built on
# the model before would keep working. A layer without a manual twin (or with an option manualbp does not
# support) stays ``torch.nn`` and is named in one ``UserWarning``, one line per type with its count and the
# reason. ResNet-18 raises none: every layer has a twin.

original = copy.deepcopy(net)
manualbp.convert(net)
print(net.resnet.layer1[0])

# %%
# ``layer_summary`` counts the layers of each type that run a hand-written backward (``manual``) and those
# that stayed ``torch.nn`` with autograd's backward (``torch``):

summary = layer_summary(net)
for kind, counts in summary.items():
    print(f"{kind:>6}: " + (", ".join(f"{n} {name}" for name, n in counts.items()) or "none"))

# %%
# Same outputs, same gradients
# ----------------------------
#
# One batch of 8 digits, in float64 so that the differences show rounding and nothing else, through the
# converted model with manualbp's cross entropy and through the original with torch's. Both are in training
# mode: batch normalisation uses the batch's statistics and updates its running statistics.

data = DigitsDataModule()
data.setup()
images, labels = data.train_set.tensors
x, target = images[:8].double(), labels[:8]
net.double()
original.double()

logits = net(x)
loss = manualbp.functional.cross_entropy(logits, target)
loss.backward()
logits_ref = original(x)
loss_ref = F.cross_entropy(logits_ref, target)
loss_ref.backward()

print(f"logits: max |difference| = {(logits - logits_ref).abs().max().item():.2e}")
print(f"loss:   {loss.item():.12f} converted, {loss_ref.item():.12f} original")
grad_diffs = {
    name: (p.grad - q.grad).abs().max().item() for (name, p), q in zip(net.named_parameters(), original.parameters())
}
worst = max(grad_diffs, key=grad_diffs.get)
print(f"gradients of all {len(grad_diffs)} parameters: max |difference| = {grad_diffs[worst]:.2e} ({worst})")
buffer_diff = max((b - c).abs().max().item() for b, c in zip(net.buffers(), original.buffers()))
print(f"batch norm running statistics after the step: max |difference| = {buffer_diff:.2e}")

# %%
# The two agree to float64's rounding. The backward pass that produced the converted model's gradients, node
# by node: walking its graph from the loss and counting the node types shows one manualbp Function per
# layer call (the ReLU module of each residual block is called twice, hence 17 ReLU nodes from 9 modules).
# What stays autograd's is what ResNet's ``forward`` computes with plain tensor operations: the eight
# residual additions and ``torch.flatten``.


def node_types(loss):
    """How many nodes of each type the backward graph of ``loss`` has (parameter leaves left out)."""
    counts, seen, todo = Counter(), set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] += 1
        todo.extend(next_node for next_node, _ in node.next_functions)
    del counts["AccumulateGrad"]
    return counts


print("converted:", dict(node_types(loss)))
print("original: ", dict(node_types(loss_ref)))

# %%
# Training it with the ``manualbp`` command
# -----------------------------------------
#
# On a shell this run would be
#
# .. code-block:: bash
#
#    manualbp fit --model.net=digits_models.DigitsResNet18 --trainer.max_epochs=1 --trainer.default_root_dir=DIR
#
# In Python, ``manualbp.cli.main`` takes the same arguments as a list and returns the exit status. The data
# module is the default, the digits; the optimizer is Adam with learning rate :math:`10^{-3}`.
# ``ClassifierModule`` builds the network from ``--model.net`` and converts it with ``manualbp.convert`` (the
# manual backend is the default), and prints what it got. The run writes into a new ``lightning_logs/version_N/``
# under ``--trainer.default_root_dir``, here the temporary folder. With stdout not a terminal (as on this
# page) the command prints one line per epoch instead of a progress bar; after the fit it tests the
# checkpoint with the best ``val_acc`` on the test set and prints ``test_acc``.
#
# A class defined in the script that runs the command would be found too (``--model.net=__main__.MyNet``),
# but its checkpoints would then name ``__main__``, which only that script can load again.

from manualbp.cli import main  # noqa: E402

options = [
    "--model.net=digits_models.DigitsResNet18",
    "--trainer.max_epochs=1",
    f"--trainer.default_root_dir={folder}",
]
if QUICK:
    options += ["--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2"]

status = main(["fit", *options])
print("exit status", status)

# %%
# The first line names the layers the command converted: all of them. The table is Lightning's model
# summary; ``Epoch N:`` lines give the last training batch's loss and the validation loss and accuracy; the
# test results follow. A ResNet-18 has far more parameters (11.2 million) than 1,258 training images of 8x8
# pixels need, and one epoch (20 steps of Adam) is little: a plain MLP reaches about 0.98 on the same test set
# (``manualbp fit``, 20 epochs). What matters here: in every step, every layer's gradients came from its
# hand-written backward, and the network learned.
#
# The run's folder
# ----------------
#
# ``config.yaml`` holds every option the run ran with, the defaults included: the trainer's, the model's
# (``arch`` and the MLP's options are there with their defaults, unused, since ``--model.net`` replaces
# them), the data module's and the optimizer's. ``manualbp fit --config config.yaml`` runs the same fit again;
# ``manualbp test --config config.yaml --ckpt_path=...`` tests a checkpoint with the same options.
# ``metrics.csv`` is Lightning's CSV log, and ``checkpoints/`` holds the best checkpoint and ``last.ckpt``.

run = folder / "lightning_logs" / "version_0"
for path in sorted(run.rglob("*")):
    if path.is_file():
        print(f"{path.relative_to(folder)!s:<72} {path.stat().st_size / 2**20:8.1f} MiB")
print()
print((run / "config.yaml").read_text())

# %%
# The logged metrics, one row per logging step (``train_loss`` every 10 steps) and per validation and test:

print((run / "metrics.csv").read_text())

# %%
# The temporary folder (the checkpoints of a ResNet-18 with Adam's state take a few hundred MiB) is removed,
# and ``sys.path`` restored:

sys.path[:] = [entry for entry in sys.path if entry != str(folder)]
sys.modules.pop("digits_models", None)
shutil.rmtree(folder)
