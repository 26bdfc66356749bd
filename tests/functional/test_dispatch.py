"""manualbp.functional._dispatch: each Function's jvp-less twin, applied only while torch.compile traces."""

from __future__ import annotations

import torch

from manualbp import functional as MF


def test_compiled_function_uses_the_jvp_less_twin():
    """The twin differs from the Function only by its jvp, and eager calls use the Function itself."""
    classes = [getattr(MF, name) for name in MF.__all__ if name.endswith("Function")]
    assert len(classes) == 22
    for cls in classes:
        twin = cls.compile_twin
        assert issubclass(twin, cls) and twin.jvp is torch.autograd.Function.jvp
        assert cls.jvp is not torch.autograd.Function.jvp
        assert twin.backward is cls.backward and twin.setup_context is cls.setup_context
    x = torch.randn(3, requires_grad=True)
    assert MF.relu(x).grad_fn._forward_cls is MF.ReLUFunction
