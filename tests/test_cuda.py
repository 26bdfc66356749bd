"""The same checks on a CUDA device; they run where one is present (the GPU machine), not on CPU-only CI."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from manualbp.cli import main
from manualbp.verify import differentiable, seeded
from tests.conftest import CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Dropout draws its mask from a different generator on CUDA than torch's fused kernel: left out here.
CUDA_CASES = [c for c in CASES if not c.id.startswith("dropout")]


@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_forward_and_gradients_match_torch(case):
    grads = []
    for module in case.build(torch.float64, "cuda"):
        args = case.sample(torch.float64, "cuda")
        out = seeded(module)(*args)
        wrt = differentiable(args) + list(module.parameters())
        grads.append((out.detach(), *torch.autograd.grad(out, wrt, torch.ones_like(out))))
    assert_close(grads[0], grads[1])


def test_fit_on_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--model.arch=lenet5", "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.fast_dev_run=true"])
