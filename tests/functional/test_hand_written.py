"""Properties of every registry op beyond what the verify battery compares (tests/verify/test_builtin_ops.py):
the backward is hand-written (no PyTorch backward kernel, nothing stored on ctx), outputs carry a custom
Function node, and extreme inputs stay finite."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from manualbp.nn import ManualModule
from manualbp.verify import differentiable, seeded
from tests.conftest import CASES


def _outputs(module, args) -> list[torch.Tensor]:
    """The module's output tensors that carry a gradient, however nested (an LSTM's (output, (h_n, c_n)))."""
    return [o for o in tree_leaves(seeded(module)(*args)) if isinstance(o, torch.Tensor) and o.requires_grad]


def _outputs_and_grads(module, args):
    outs = _outputs(module, args)
    wrt = differentiable(args) + [p for p in module.parameters() if p.requires_grad]
    return [o.detach() for o in outs], torch.autograd.grad(
        outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True
    )


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_are_finite(case):
    manual, _ = case.build(torch.float32)
    args = case.sample(torch.float32)
    outs, grads = _outputs_and_grads(manual, args)
    assert all(torch.isfinite(out).all() for out in outs)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()


#: Autograd nodes a layer made of layers (attention, a transformer layer, a ViT) may have between its hand-written
#: Functions: views and reshapes, the split of a packed projection, the residual sums, the average of attention's
#: weights over the heads, the zeros appended by add_zero_attn, the copy an in-place case starts from, a recurrent
#: layer's states taken apart. None of them reaches a parameter.
GLUE = {
    "AddBackward0",
    "CatBackward0",
    "CloneBackward0",
    "MeanBackward1",
    "PermuteBackward0",
    "ReshapeAliasBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "SplitBackward0",
    "SplitWithSizesBackward0",
    "SqueezeBackward1",
    "TransposeBackward0",
    "UnbindBackward0",
    "UnsafeViewBackward0",
    "UnflattenBackward0",
    "UnsqueezeBackward0",
    "ViewBackward0",
}
#: The backward kernels of that glue's indexing (a slice of the packed projection, the class token's row).
GLUE_KERNELS = {"aten.select_backward", "aten.slice_backward"}


def _graph(outs: list[torch.Tensor]) -> list:
    """Every autograd node the outputs' backward runs, AccumulateGrad leaves excluded."""
    seen, stack, nodes = set(), [o.grad_fn for o in outs], []
    while stack:
        node = stack.pop()
        if node is None or node in seen or type(node).__name__ == "AccumulateGrad":
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


def _is_function(node) -> bool:
    return isinstance(node, torch.autograd.function.BackwardCFunction)


@pytest.mark.parametrize("case", CASES)
def test_every_node_is_a_hand_written_function_or_glue(case):
    """Outputs come from hand-written Functions; a layer made of layers has only shape glue between them, and
    every parameter's gradient comes from a Function."""
    manual, _ = case.build(torch.float64)
    outs = _outputs(manual, case.sample(torch.float64))
    nodes = _graph(outs)
    assert any(_is_function(node) for node in nodes)
    autograd_nodes = sorted({type(node).__name__ for node in nodes if not _is_function(node)})
    assert set(autograd_nodes) <= GLUE, f"autograd nodes beyond shape glue: {autograd_nodes}"
    parameters = {id(p) for p in manual.parameters()}
    for node in nodes:
        if not _is_function(node):
            leaves = [n.variable for n, _ in node.next_functions if type(n).__name__ == "AccumulateGrad"]
            assert not any(id(leaf) in parameters for leaf in leaves), (
                f"{type(node).__name__} writes a parameter's gradient"
            )
    if not any(isinstance(m, ManualModule) for m in manual.children()):  # a single layer: its own Function
        assert all(_is_function(out.grad_fn) for out in outs), [type(o.grad_fn).__name__ for o in outs]


@pytest.mark.parametrize("case", CASES)
def test_tensors_are_saved_only_through_save_for_backward(case):
    manual, _ = case.build(torch.float64)
    for node in _graph(_outputs(manual, case.sample(torch.float64))):
        if _is_function(node):
            stray = [name for name, value in vars(node).items() if isinstance(value, torch.Tensor)]
            assert stray == [], f"tensors stored on ctx of {type(node).__name__}: {stray}"


class _AtenOpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES)
def test_backward_runs_no_pytorch_backward_kernel(case):
    """The backward is hand-written: none of the aten ops it dispatches is a ``*_backward`` kernel."""
    manual, _ = case.build(torch.float64)
    args = case.sample(torch.float64)
    outs = _outputs(manual, args)
    wrt = differentiable(args) + list(manual.parameters())
    with _AtenOpLog() as log:
        torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True)
    assert log.ops, "the backward dispatched no op at all"
    kernels = sorted({op for op in log.ops if "backward" in op} - GLUE_KERNELS)
    assert kernels == [], f"PyTorch backward kernels called: {kernels}"
