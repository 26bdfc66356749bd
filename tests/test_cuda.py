"""The CUDA checks of the verify battery and a GPU fit; they run where a CUDA device is present (the GPU
machine), and are skipped on CPU-only machines, where the battery reports them as unsupported."""

from __future__ import annotations

import pytest
import torch

from manualbp.cli import main
from manualbp.verify import CUDA_CHECKS, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_builtin_op_passes_the_cuda_checks():
    report = verify_cases(BUILTIN_CASES, checks=CUDA_CHECKS)
    assert all(row.status == "pass" for row in report.rows), report.matrix() + "\n" + str(report)


def test_fit_on_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--model.arch=lenet5",
            "--trainer.accelerator=gpu",
            "--trainer.devices=1",
            "--trainer.fast_dev_run=true",
        ]
    )
