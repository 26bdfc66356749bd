"""The oldest torch manualbp runs on, checked when ``manualbp`` is imported (this module runs the check).

The hand-written Functions rely on torch internals (``torch._C._are_functorch_transforms_active``,
``torch.autograd.function._SingleLevelFunction``) and on torch features such as ``BatchNorm(bias=...)``,
so an older torch would fail deep inside an import or a forward; this check fails first, with the fix.
``MIN_TORCH`` is the one place the minimum lives (``pyproject.toml`` states the same bound, and a test
keeps the two equal).
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

#: The oldest torch release the test suite passes on (torchvision 0.29 pairs with it). On 2.12 five tests fail
#: (Dynamo cannot trace id() of a tensor in the recurrent layers; a jvp check and the guide examples of it), so 2.12 and 2.13 are not claimed.
MIN_TORCH = "2.14"


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, micro) of a version string; pre-releases and local builds of a release count as
    that release ("2.12.0a0+git1234" and "2.12.0+cpu" are 2.12.0)."""
    release = Version(version).release
    return (*release, 0, 0)[:3]


def check_torch_version(version: str | None = None) -> None:
    """Raise ImportError when ``version`` (default: the installed torch's) is older than ``MIN_TORCH``."""
    if version is None:
        import torch

        version = str(torch.__version__)
    try:
        too_old = _release(version) < _release(MIN_TORCH)
    except InvalidVersion:
        return  # a build that does not say its version: let it try
    if too_old:
        raise ImportError(
            f"manualbp needs torch >= {MIN_TORCH} (found torch {version}); upgrade torch and torchvision "
            f'together with: pip install --upgrade "torch>={MIN_TORCH}" torchvision '
            "(add --index-url https://download.pytorch.org/whl/cpu for the CPU-only build)"
        )


check_torch_version()
