"""The README's examples run, and its excerpt of the code is the code; so do the guide pages' examples (docs/guide)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from manualbp.functional.linear import LinearFunction, linear_grads

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The pages whose examples are run too: the guide of the documentation site, where the README's reference moved.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _examples(text: str) -> list[tuple[str, str | None]]:
    """Each python block with what the page says it prints: the ```text output block that comes next
    before any other code block, or None when it shows no output."""
    fences = re.findall(r"```([^\n]*)\n(.*?)```", text, flags=re.S)
    examples = []
    for index, (info, body) in enumerate(fences):
        if info.strip() == "python":
            following = fences[index + 1] if index + 1 < len(fences) else ("", "")
            examples.append((body, following[1] if following[0].strip() == "text output" else None))
    return examples


def _page_id(page: Path) -> str:
    return "readme" if page.name == "README.md" else f"guide-{page.stem}"


@pytest.mark.parametrize(
    "code, expected",
    [
        pytest.param(*example, id=f"{_page_id(page)}-python-block-{i}")
        for page in PAGES
        for i, example in enumerate(_examples(page.read_text()))
    ],
)
def test_each_python_example_runs_alone_and_prints_what_the_readme_shows(code, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warning on the way
    if expected is not None:
        assert result.stdout == expected


def test_backward_excerpt_matches_the_source():
    (excerpt,) = [block for block in _blocks("py") if "def backward" in block]
    sources = [textwrap.dedent(inspect.getsource(code)).strip() for code in (LinearFunction.backward, linear_grads)]
    assert excerpt.strip() == "\n\n\n".join(sources)


def test_the_readme_stays_a_landing_page():
    """At most 250 lines: the reference lives in the documentation site (docs/)."""
    assert len(README.splitlines()) <= 250
