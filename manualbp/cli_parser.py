"""The parser behind the ``manualbp`` command: exact option names and errors of a line or two.

``ManualbpArgumentParser`` is the ``LightningArgumentParser`` that ``ManualbpCLI`` builds for the command and for
each subcommand. It turns argparse's abbreviations off, so that ``--trainer.max_epoch=1`` is an unknown option
rather than silently ``--trainer.max_epochs=1``, and it replaces jsonargparse's report of a parse error (the
whole usage, then the message) by the message alone, exit status 2::

    manualbp: error: unrecognized option --trainer.max_epoch; did you mean --trainer.max_epochs?
    see `manualbp fit --help`

A suggestion is the closest option name (difflib): among the parser's own options and those of the classes
they default to (``--data.batch_size`` of the default DigitsDataModule), or, for an option that the class given
on the command line lacks (``--data=MNISTDataModule --data.batchsize=3``), among that class's options. A value
outside an option's choices (``--model.arch=lstmm``) or a class name that no known class has
(``--trainer.callbacks+=GradientFlo``) is answered with the closest choice or class name, a class given without an
argument it has no default for (``--model.dp.noise_multiplier=1.0`` alone) with the options it needs. Any other
error (``--trainer.max_epochs=many``) keeps the meaningful lines of jsonargparse's message, joined into one.

``--help`` leaves Lightning's Trainer options (``--trainer.*``, half the list) out and shows the model's and the
data's options first; ``--help=trainer`` shows the Trainer's alone, ``--help=all`` everything.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter, Namespace
from jsonargparse._common import debug_mode_active
from jsonargparse._typehints import get_all_subclass_paths
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

# jsonargparse's report of a value that is not among a Literal's choices.
_CHOICE = re.compile(
    r'^Parser key "(?P<key>[^"]+)":\s*Expected a typing\.Literal\[(?P<choices>.*)\]\. Got value: (?P<value>.*)$',
    re.DOTALL,
)

# jsonargparse's report of a class name that no class known to a subclass-typed key has.
_UNKNOWN_CLASS = re.compile(
    r'^Parser key "(?P<key>[^"]+)":.*?Expected a dot import path string: (?P<name>\S+)', re.DOTALL
)

# jsonargparse's report of a class given without an argument that has no default.
_REQUIRED = re.compile(
    r'^Parser key "(?P<key>[^"]+)":.*?Problem with given class_path \'(?P<class_path>[^\']+)\':\s*'
    r"the following arguments are required: (?P<names>[^\n]+)",
    re.DOTALL,
)

# How many of a class-typed option's known subclasses its help lists (torch.nn.Module has hundreds).
_KNOWN_SUBCLASSES_SHOWN = 20

# The sections of ``--help=<section>``: the Trainer's options alone, or every option.
_HELP_SECTIONS = ("trainer", "all")

# Lines of jsonargparse's messages that describe its type machinery rather than the mistake.
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*"
    r"|Given value: NestedArg\(.*\)|Expected a <class 'NoneType'>)?$"
)


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, listing at most ``_KNOWN_SUBCLASSES_SHOWN`` known subclasses of a class-typed option."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        head, known, listing = text.partition(", known subclasses: ")
        names = listing.removesuffix(")").split(", ")
        if not known or len(names) <= _KNOWN_SUBCLASSES_SHOWN:
            return text
        shown = ", ".join(names[:_KNOWN_SUBCLASSES_SHOWN])
        return f"{head}{known}{shown} and {len(names) - _KNOWN_SUBCLASSES_SHOWN} more)"


class _SectionHelpAction(argparse._HelpAction):
    """``-h``, ``--help``, and ``--help=<section>`` (``trainer``, ``all``) on a parser with Trainer options."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        argparse.Action.__init__(
            self, option_strings, dest, nargs="?", default=argparse.SUPPRESS, metavar="{trainer,all}", help=help
        )

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if values is not None and parser.groups and "trainer" in parser.groups:
            if values not in _HELP_SECTIONS:
                parser.error(f"--help takes no value or one of {', '.join(_HELP_SECTIONS)}, got {values}")
            parser.help_section = values
        super().__call__(parser, namespace, values, option_string)


class ManualbpArgumentParser(LightningArgumentParser):
    """A ``LightningArgumentParser`` named ``manualbp``, without abbreviated options, whose parse errors are
    ``manualbp: error: <message>`` and a pointer to ``--help`` on stderr, with exit status 2, and whose ``--help``
    shows the model's and the data's options first and the Trainer's only when asked (``--help=trainer``, ``all``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", _PROG)
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        add_help = kwargs.pop("add_help", True)
        super().__init__(*args, add_help=False, **kwargs)
        self.help_section: str | None = None  # set by --help=<section>
        if add_help:
            self.add_argument("-h", "--help", action=_SectionHelpAction, help="Show this help message and exit.")

    def _given_subcommand_parser(self) -> ManualbpArgumentParser | None:
        """The parser of the subcommand among the arguments being parsed, if any: jsonargparse reports some errors
        in a subcommand's options (a class's missing argument) from the command's parser, without naming it."""
        subcommands = self._subcommands_action
        if subcommands is None:
            return None
        given = [arg for arg in getattr(self, "args", []) if subcommands is not None and arg in subcommands.choices]
        return subcommands.choices[given[0]] if given else None

    def format_help(self, *args: Any, **kwargs: Any) -> str:
        """The help of ``help_section``: without the Trainer's options unless it is ``all``, or only them (``trainer``);
        in full for a parser without Trainer options."""
        named = self.groups or {}
        trainer = named.get("trainer")
        if trainer is None or self.help_section == "all":
            return super().format_help(*args, **kwargs)
        groups, usage, epilog = self._action_groups, self.usage, self.epilog
        prog = self.prog.replace(" [options]", "")
        if self.help_section == "trainer":
            self._action_groups = [trainer]
        else:
            first = [named[key] for key in ("model", "data") if key in named]
            self._action_groups = first + [group for group in groups if group is not trainer and group not in first]
            self.epilog = (
                f"Lightning's Trainer options (--trainer.*) are listed by `{prog} --help=trainer`, "
                f"every option by `{prog} --help=all`."
            )
        self.usage = f"{prog} [options]"
        try:
            return super().format_help(*args, **kwargs)
        finally:
            self._action_groups, self.usage, self.epilog = groups, usage, epilog

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the short form of ``message`` and exit with status 2; raise as jsonargparse does when the
        parser is not to exit on errors (``exit_on_error=False``, ``JSONARGPARSE_DEBUG``)."""
        parser = getattr(ex, "subcommand_parser", None) or self._given_subcommand_parser() or self
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
    choice = _CHOICE.match(message)
    if choice:
        key, value = choice.group("key", "value")
        choices = [str(c) for c in ast.literal_eval(f"[{choice.group('choices')}]")]
        return [f"--{key}={value} is not one of {', '.join(choices)}{_closest(value, choices)}"]
    unknown_class = _UNKNOWN_CLASS.match(message)
    if unknown_class:
        key, name = unknown_class.group("key", "name")
        action = parser._option_string_actions.get(f"--{key}")
        typehint = getattr(action, "_typehint", None)
        known = [path.rpartition(".")[2] for path in get_all_subclass_paths(typehint)] if typehint else []
        return [f"--{key}: unknown class {name}{_closest(name, known)}"]
    required = _REQUIRED.match(message)
    if required:
        key, class_path = required.group("key", "class_path")
        names = [name.strip() for name in required.group("names").split(",")]
        options = ", ".join(f"--{key}.{name}" for name in names)
        no_default = "it has no default" if len(names) == 1 else "they have no defaults"
        return [f"--{key} ({class_path.rpartition('.')[2]}) needs {options} too: {no_default}"]
    return [_meaningful(message)]


def _closest(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean <closest>?"`` for the choice closest to ``value`` (difflib), or ``""`` when none is close."""
    closest = difflib.get_close_matches(value, list(choices), n=1, cutoff=_CUTOFF)
    return f"; did you mean {closest[0]}?" if closest else ""


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
    assert parser._subcommands_action is not None, "called after LightningCLI added the subcommands"
    parser._subcommands_action.add_subcommand("verify", verify, help=VERIFY_DESCRIPTION)
