"""The parser behind the ``manualbp`` command: exact option names and errors of a line or two.

``ManualbpArgumentParser`` is the ``LightningArgumentParser`` that ``ManualbpCLI`` builds for the command and for
each subcommand. It turns argparse's abbreviations off, so that ``--trainer.max_epoch=1`` is an unknown option
rather than silently ``--trainer.max_epochs=1``, and it replaces jsonargparse's report of a parse error (the
whole usage, then the message) by the message alone, exit status 2::

    manualbp: error: unrecognized option --trainer.max_epoch; did you mean --trainer.max_epochs?
    see `manualbp fit --help`

A suggestion is the closest option name (difflib): among the parser's own options and those of the classes
they default to (``--data.batch_size`` of the default DigitsDataModule), or, for an option that the class given
on the command line lacks (``--data=MNISTDataModule --data.batchsize=3``), among that class's options. Any
other error (``--trainer.max_epochs=many``) keeps the meaningful lines of jsonargparse's message, joined into one.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from jsonargparse import Namespace
from jsonargparse._common import debug_mode_active
from pytorch_lightning.cli import LightningArgumentParser

from manualbp.verify.command import DESCRIPTION as VERIFY_DESCRIPTION

__all__ = ["ManualbpArgumentParser", "add_verify_subcommand"]

_PROG = "manualbp"

_UNRECOGNIZED = "unrecognized arguments: "

# How close (difflib's ratio) a known option must come to an unknown one to be suggested.
_CUTOFF = 0.6

# jsonargparse's report of an option that the class given for a subclass-typed key does not take.
_CLASS_OPTION = re.compile(
    r'^Parser key "(?P<key>[^"]+)":.*?'
    r"Problem with given class_path '(?P<class_path>[^']+)':\s*Option '(?P<name>[^']+)' is not accepted",
    re.DOTALL,
)

# Lines of jsonargparse's messages that describe its type machinery rather than the mistake.
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*"
    r"|Given value: NestedArg\(.*\)|Expected a <class 'NoneType'>)?$"
)


class ManualbpArgumentParser(LightningArgumentParser):
    """A ``LightningArgumentParser`` named ``manualbp``, without abbreviated options, whose parse errors are
    ``manualbp: error: <message>`` and a pointer to ``--help`` on stderr, with exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", _PROG)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the short form of ``message`` and exit with status 2; raise as jsonargparse does when the
        parser is not to exit on errors (``exit_on_error=False``, ``JSONARGPARSE_DEBUG``)."""
        parser = getattr(ex, "subcommand_parser", None) or self
        if not parser.exit_on_error or debug_mode_active():
            super().error(message, ex)
        for line in _short_message(parser, message):
            sys.stderr.write(f"{_PROG}: error: {line}\n")
        sys.stderr.write(f"see `{parser.prog.replace(' [options]', '')} --help`\n")
        self.exit(2)


def _short_message(parser: LightningArgumentParser, message: str) -> list[str]:
    """The lines that report ``message``, jsonargparse's error from ``parser``: one per unknown option, with
    the closest known option when there is one, or the meaningful lines of any other message joined in one."""
    if message.startswith(_UNRECOGNIZED):
        return _unrecognized(parser, message[len(_UNRECOGNIZED) :].split())
    class_option = _CLASS_OPTION.match(message)
    if class_option:
        key, class_path, name = class_option.group("key", "class_path", "name")
        option = f"--{key}.{name}"
        hint = _did_you_mean(option, _class_options(class_path, key))
        return [f"unrecognized option {option} for {class_path.rpartition('.')[2]}{hint}"]
    return [_meaningful(message)]


def _unrecognized(parser: LightningArgumentParser, arguments: list[str]) -> list[str]:
    """One line per unknown option among ``arguments`` (the values that followed them left out), or the
    arguments themselves when none of them is an option."""
    options = [argument.split("=", 1)[0] for argument in arguments if argument.startswith("-")]
    if not options:
        return [f"{_UNRECOGNIZED}{' '.join(arguments)}"]
    known = _known_options(parser)
    return [f"unrecognized option {option}{_did_you_mean(option, known)}" for option in options]


def _did_you_mean(option: str, known: Iterable[str]) -> str:
    """``"; did you mean --closest?"``, or ``""`` when no known option is close to ``option``.

    An option of the same last name under another key wins (``--model.lr``: ``--optimizer.lr``); a key
    that ``option`` extends (``--model`` of ``--model.lr``, which takes a config file) is never suggested.
    """
    candidates = [name for name in known if not option.startswith(f"{name}.")]
    leaf = option.rpartition(".")[2]
    same_leaf = [name for name in candidates if name.rpartition(".")[2] == leaf]
    scored = [(_similarity(option, name), name) for name in same_leaf or candidates]
    score, closest = max(scored, default=(0.0, ""))
    return f"; did you mean {closest}?" if same_leaf or score >= _CUTOFF else ""


def _similarity(option: str, name: str) -> float:
    """difflib's similarity of two option names past the keys they share: ``--model.momentum`` is not
    close to ``--model.net`` for sharing ``--model.``, while ``--trainer.max_epoch`` is to ``--trainer.max_epochs``."""
    a, b = option.split("."), name.split(".")
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
        shared += 1
    return difflib.SequenceMatcher(None, ".".join(a[shared:]), ".".join(b[shared:])).ratio()


def _known_options(parser: LightningArgumentParser) -> list[str]:
    """The option strings of ``parser`` and, for each key whose default is a class (``--data``, a
    DigitsDataModule), the options of that class under the key (``--data.batch_size``)."""
    options = list(parser._option_string_actions)
    for action in parser._actions:
        class_path = _default_class_path(action.default)
        if class_path is not None:
            options += _class_options(class_path, action.dest)
    return options


def _default_class_path(default: Any) -> str | None:
    """The class path of a default given as ``{"class_path": ...}``, else None."""
    if isinstance(default, (Mapping, Namespace)) and "class_path" in default:
        return default["class_path"]
    return None


def _class_options(class_path: str, key: str) -> list[str]:
    """The options under ``--key.`` that jsonargparse gives the class at ``class_path`` (none when the path
    does not name a class whose signature it can read)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = LightningArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, key)
    except Exception:  # only a suggestion is lost: the error being reported is the user's, not this one
        return []
    return [option for option in parser._option_string_actions if option.startswith(f"--{key}.")]


def _meaningful(message: str) -> str:
    """jsonargparse's multi-line ``message`` as one line: the lines that describe the mistake, without
    their bullets and the lines about its type machinery; a line ending in ":" heads the next one."""
    lines = [line.strip().removeprefix("- ") for line in message.strip().splitlines()]
    text = ""
    for line in lines:
        if not _NOISE.match(line):
            separator = "" if not text else " " if text.endswith(":") else "; "
            text += separator + line
    return text


def add_verify_subcommand(parser: LightningArgumentParser) -> None:
    """List ``verify`` among the subcommands of the command's ``parser``, so that ``manualbp --help`` shows
    it; ``manualbp.cli.main`` runs it before any parser sees the arguments."""
    verify = type(parser)(description=VERIFY_DESCRIPTION)
    parser._subcommands_action.add_subcommand("verify", verify, help=VERIFY_DESCRIPTION)
