"""The device plumbing of the verify battery and of a fit, on every device of ``DEVICES`` (the CPU, and CUDA where a
device is present: the GPU machine, experiments/gpu_check.sh). The battery's own cells on CUDA are
tests/verify/test_builtin_ops.py's ``[...-cuda]`` ones; a fit on the device, tests/test_lightning.py's; the fits at each
precision, tests/test_precision.py's."""

from __future__ import annotations

import json

import pytest
import torch

from manualbp.verify import CPU_CHECKS, CPU_ONLY_CHECKS, CUDA_CHECKS, available_checks, verify, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES
from manualbp.verify.command import main as verify_main

#: A few cases of different kinds: a matmul, a convolution, a normalisation with running statistics, a recurrent
#: layer, attention.
SOME = ("linear-bias", "conv2d-k3", "batch_norm2d-train", "lstm", "attention")


def _cases() -> list:
    cases = [c for c in BUILTIN_CASES if c.id in SOME]
    assert len(cases) == len(SOME)
    return cases


def test_the_default_checks_of_each_device(device):
    checks = available_checks(device)
    if device.type == "cuda":
        assert set(CUDA_CHECKS) <= set(checks) and not set(CPU_ONLY_CHECKS) & set(checks)
        assert "gradcheck" in checks and "autocast_chain" in checks
    else:
        assert checks[: len(CPU_CHECKS)] == CPU_CHECKS


def test_some_builtin_cases_pass_every_quick_check_on_the_device(device):
    checks = [c for c in available_checks(device) if c not in ("compile", "compile_dynamic", "export_dynamic")]
    report = verify_cases(_cases(), checks=checks, device=device)
    bad = [row for row in report.rows if row.status not in ("pass", "unsupported")]
    assert not bad, report.matrix() + "\n" + str(report)


def test_a_callable_sample_is_made_on_the_device(device):
    seen = []

    def sample(dtype, where):
        seen.append(where)
        return [(torch.randn(3, 4, dtype=dtype, device=where),)]

    report = verify(torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), sample, checks=["backward_float64"], device=device)
    assert report.passed and seen == [device]


def test_the_command_runs_on_the_device(device, tmp_path, capsys):
    path = tmp_path / "rows.json"
    code = verify_main(
        ["--op", "linear-bias", "--device", device.type, "--check", "backward_float32", "--json", str(path)]
    )
    assert code == 0, capsys.readouterr().out
    assert [row["status"] for row in json.loads(path.read_text())] == ["pass"]


def test_cuda_is_refused_where_there_is_none(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        verify_main(["--op", "linear-bias", "--device", "cuda"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cuda"):
        verify(torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), [(torch.randn(3, 4),)], device="cuda")
