"""manualbp._requirements: a torch older than MIN_TORCH fails at import with the fix, and pyproject.toml agrees."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manualbp._requirements import MIN_TORCH, check_torch_version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _below(version: str) -> str:
    """The release one minor version below ``version`` ("2.12" -> "2.11.0")."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return f"{major}.{minor - 1}.0" if minor else f"{major - 1}.99.0"


def test_the_installed_torch_passes():
    check_torch_version()


@pytest.mark.parametrize("suffix", ["", "+cpu", "a0+git1234abc", ".post1"])
def test_the_minimum_release_passes_in_every_build(suffix):
    check_torch_version(f"{MIN_TORCH}.0{suffix}")


@pytest.mark.parametrize("suffix", ["", "+cu121"])
def test_an_older_torch_is_refused_with_the_fix(monkeypatch, suffix):
    old = _below(MIN_TORCH) + suffix
    monkeypatch.setattr(torch, "__version__", old)
    with pytest.raises(ImportError) as error:
        check_torch_version()
    message = str(error.value)
    assert f"manualbp needs torch >= {MIN_TORCH} (found torch {old})" in message
    assert f'pip install --upgrade "torch>={MIN_TORCH}" torchvision' in message


def test_import_manualbp_fails_first_on_an_older_torch():
    """The check runs before any other manualbp import, so the message is the ImportError, not a deeper error."""
    code = f"import torch; torch.__version__ = {_below(MIN_TORCH)!r}; import manualbp"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"ImportError: manualbp needs torch >= {MIN_TORCH}")


def test_pyproject_states_the_same_minimum():
    """pyproject.toml's torch bound is MIN_TORCH, and its torchvision bound the release paired with it
    (torchvision 0.(minor + 15) for torch 2.minor)."""
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    bounds = {}
    for dependency in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*>=\s*([0-9.]+)", dependency)
        if match:
            bounds[match[1]] = match[3]
    assert bounds["torch"] == MIN_TORCH
    major, minor = (int(part) for part in MIN_TORCH.split("."))
    assert major == 2 and bounds["torchvision"] == f"0.{minor + 15}"
