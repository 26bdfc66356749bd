"""``import manualbp`` gives the whole package: the core eagerly, the Lightning side on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_submodules_are_attributes_of_the_package_loaded_on_first_use():
    out = _run(
        "import sys, manualbp\n"
        "print(sorted(m for m in ('pytorch_lightning', 'torchvision', 'matplotlib') if m in sys.modules))\n"
        "print(manualbp.models.mlp.__name__, manualbp.verify.verify.__name__, manualbp.data.DigitsDataModule.__name__,\n"
        "      manualbp.lightning.ClassifierModule.__name__, manualbp.callbacks.GradientFlow.__name__)\n"
        "print(all(name in dir(manualbp) for name in ('models', 'verify', 'data', 'lightning', 'callbacks')))\n"
    )
    assert out.splitlines() == [
        "[]",  # nothing heavy comes with `import manualbp`
        "mlp verify DigitsDataModule ClassifierModule GradientFlow",
        "True",
    ]


def test_an_unknown_attribute_is_an_attribute_error():
    import manualbp

    with pytest.raises(AttributeError, match="module 'manualbp' has no attribute 'nosuch'"):
        manualbp.nosuch  # noqa: B018
