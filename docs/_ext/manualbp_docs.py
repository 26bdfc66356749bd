"""The site's generated parts, made when the build starts, and its one check of the code it documents.

* ``_generated/cli/<subcommand>.txt``: what ``manualbp <subcommand> --help=all`` prints (``verify --help`` for
  ``verify``), for the command-line pages: every option, as the parser has it, never retyped.
* ``_generated/results/*.md``: the tables of measured results, read from ``experiments/results/*.json``
  (``results.py``).
* A public name without a docstring is a build warning (an error under ``-W``): every name in the ``__all__``
  of a public module (the public names defined in it when it has no ``__all__``), and their public methods.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import results
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: The modules whose public names the API reference documents (``api/*.rst``).
PUBLIC_MODULES = (
    "manualbp",
    "manualbp.functional",
    "manualbp.nn",
    "manualbp.verify",
    "manualbp.rules",
    "manualbp.per_sample",
    "manualbp.callbacks",
    "manualbp.lightning",
    "manualbp.data",
    "manualbp.models",
)

#: The ``manualbp`` subcommands, each with the help that lists all its options.
SUBCOMMANDS = {
    "fit": ["fit", "--help=all"],
    "validate": ["validate", "--help=all"],
    "test": ["test", "--help=all"],
    "predict": ["predict", "--help=all"],
    "verify": ["verify", "--help"],
    "manualbp": ["--help"],
}


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it holds it already (Sphinx rebuilds what changed on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def generate_cli(out: Path) -> None:
    """The help of every subcommand, as the installed ``manualbp`` prints it (80 columns)."""
    env = {**os.environ, "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
    for name, args in SUBCOMMANDS.items():
        command = [sys.executable, "-c", "import sys; from manualbp.cli import main; sys.exit(main())", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"manualbp {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        _write_if_changed(out / f"{name}.txt", done.stdout)


def public_names(module_name: str) -> list[tuple[str, object]]:
    """(qualified name, object) of a module's public names: its ``__all__``, else the public names defined in it."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == module_name
        ]  # fmt: skip
    return [(f"{module_name}.{n}", getattr(module, n)) for n in names]


def missing_docstrings() -> list[str]:
    """Public names (and the public methods and properties of public classes) without a docstring."""
    missing = []
    for module_name in PUBLIC_MODULES:
        for qualified, obj in public_names(module_name):
            if inspect.ismodule(obj) or typing.get_origin(obj) is not None:  # a module, a type alias (Literal[...])
                continue
            if not inspect.getdoc(obj):
                missing.append(qualified)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                        continue
                    if not inspect.getdoc(getattr(obj, attr)):
                        missing.append(f"{qualified}.{attr}")
    return sorted(set(missing))


#: ``*word*`` emphasis as the docstrings use it; any other ``*`` is a product, a glob or a shape (``(N, *)``).
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[A-Za-z])[^*\n]*?(?<=\w)\*(?![\w*])")
_LITERAL = re.compile(r"``.*?``")


def _escape(text: str) -> str:
    """``*`` and ``|`` of a prose line escaped for reStructuredText, except inside ````literals```` and
    ``*emphasis*``."""
    out, last = [], 0
    for match in _LITERAL.finditer(text):
        out.append(_escape_prose(text[last : match.start()]))
        out.append(match.group())
        last = match.end()
    out.append(_escape_prose(text[last:]))
    return "".join(out)


def _escape_prose(text: str) -> str:
    kept = {m.start(): m.end() for m in _EMPHASIS.finditer(text)}
    out, i = [], 0
    while i < len(text):
        if i in kept:
            out.append(text[i : kept[i]])
            i = kept[i]
            continue
        char = text[i]
        out.append("\\" + char if char in "*|" and not text.startswith("**", i) else char)
        i += 1
    return "".join(out)


_LIST_ITEM = re.compile(r"^(\s*)((?:\d+\.|[-*•])\s+)")


def _text_indent(line: str) -> int:
    """Where the text of ``line`` starts: past a list item's marker (``1. ``, ``- ``), so that the item's continued
    lines are not taken for an indented block."""
    item = _LIST_ITEM.match(line)
    return len(item.group(1)) + len(item.group(2)) if item else len(line) - len(line.lstrip())


def formulas_as_literal_blocks(lines: list[str]) -> list[str]:
    """A docstring written for ``help()`` as reStructuredText: a block indented under a line of prose (the
    formulas, shapes and argument lists the docstrings set out that way) becomes a literal block, kept as written;
    ``*`` and ``|`` in prose are escaped (``_escape``). Doctest blocks (``>>>``) and blocks already introduced by
    ``::`` are left as they are."""
    out: list[str] = []
    indent_of = lambda line: len(line) - len(line.lstrip())  # noqa: E731
    block_indent: int | None = None  # inside a literal block: the indent of the prose above it
    for line in lines:
        if block_indent is not None:
            if not line.strip() or indent_of(line) > block_indent:
                out.append(line)
                continue
            block_indent = None
            if out and out[-1].strip():
                out.append("")
        previous = next((x for x in reversed(out) if x.strip()), None)
        starts_block = (
            line.strip()
            and previous is not None
            and indent_of(line) > _text_indent(previous)
            and not line.lstrip().startswith(">>>")
        )
        if starts_block:
            if not previous.rstrip().endswith("::"):
                index = len(out) - 1 - next(i for i, x in enumerate(reversed(out)) if x.strip())
                out[index] = out[index].rstrip() + " ::"
            if out[-1].strip():
                out.append("")
            block_indent = indent_of(previous)
            out.append(line)
            continue
        if previous is not None and previous.rstrip().endswith("::") and line.strip():
            block_indent = indent_of(previous)  # a block the docstring introduced itself
            out.append(line)
            continue
        out.append(_escape(line) if not line.lstrip().startswith(">>>") else line)
    return out


def _on_docstring(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    lines[:] = formulas_as_literal_blocks(lines)


def _on_builder_inited(app: Sphinx) -> None:
    generated = Path(app.srcdir) / "_generated"
    generate_cli(generated / "cli")
    results.generate(generated / "results")
    for name in missing_docstrings():
        logger.warning(f"public name without a docstring: {name}", type="manualbp", subtype="docstring")


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _on_builder_inited)
    app.connect("autodoc-process-docstring", _on_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
