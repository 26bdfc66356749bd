"""The README's examples run, and its excerpt of the code is the code."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

from manualbp.functional.linear import LinearFunction, linear_grads

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_examples_run_in_order():
    namespace: dict = {}
    for index, block in enumerate(_blocks("python")):
        exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
    assert len(_blocks("python")) >= 2


def test_backward_excerpt_matches_the_source():
    (excerpt,) = [block for block in _blocks("py") if "def backward" in block]
    sources = [textwrap.dedent(inspect.getsource(code)).strip() for code in (LinearFunction.backward, linear_grads)]
    assert excerpt.strip() == "\n\n\n".join(sources)
