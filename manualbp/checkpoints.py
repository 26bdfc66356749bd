"""Checkpoints: may this one be loaded (does it name code to run), does it fit the network it is loaded into, and
do the options given with it agree with its own? One line saying which class or which option, instead of running
the code, torch's state-dict traceback or an option replaced without a word.

**Trust.** A checkpoint stores the ClassifierModule options it was made with, and a network of the user's own as
its class path (``net: {class_path: mypackage.MyNet, init_args: {...}}``, as LightningCLI saves ``--model.net``).
Loading such options means importing that module and running the class's constructor: code the file chooses.
``torch.load(weights_only=True)`` keeps the unpickling safe but not this step, which LightningCLI (merging the
options into its config) and Lightning's ``load_from_checkpoint`` (through the ``_instantiator`` it names) take.
So a checkpoint that names a class loads only when the user has named that class too: ``--model.net`` on the
command line (or the run's ``config.yaml`` given with ``--config``), ``trusted_classes=[...]`` to
``ClassifierModule.load_from_checkpoint``. The built-in networks (``arch``: mlp, lenet5, rnn, lstm, gru) name no
class and load as ever. No class is trusted for its package either (``torch.nn.*``, ``manualbp.*``): a class
path's arguments are resolved by type too, and may name further classes and callables to import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, get_args

import torch
from lightning_fabric.utilities.cloud_io import _load as lightning_load
from pytorch_lightning.core.saving import (
    CHECKPOINT_PAST_HPARAMS_KEYS,
    load_hparams_from_tags_csv,
    load_hparams_from_yaml,
)

from manualbp.models import Cell, ViTOptions

# The ClassifierModule options that decide the network's shape and layers; backend and dropout do not
# (a checkpoint of either backend loads into the other).
_NETWORK_OPTIONS = (
    "arch",
    "net",
    "hidden",
    "activation",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "vit",
    "in_shape",
    "num_classes",
)
# Options of the recurrent archs only.
_RECURRENT_OPTIONS = ("hidden_size", "num_layers", "bidirectional")
# Options the manualbp command links from the data module.
_FROM_DATA = ("in_shape", "num_classes")


class CheckpointMismatchError(ValueError):
    """A checkpoint made by another network than the one it is loaded into."""


class UntrustedCheckpointError(ValueError):
    """A checkpoint whose options name a class that loading it would import and construct, which the user has not
    named (``--model.net``, ``trusted_classes=``)."""


def saved_hyperparameters(
    checkpoint_path: str | Path | IO[bytes], hparams_file: str | Path | None = None
) -> dict[str, Any]:
    """The options ``load_from_checkpoint`` builds the module from: ``hparams_file``'s (a .csv or .yaml file, which
    replaces the checkpoint's), else those saved in the checkpoint (``hyper_parameters``, and the keys of Lightning
    0.7). The checkpoint is read as Lightning reads it (a path, a URL or a file object, rewound after), with
    ``weights_only=True``: tensors and plain containers only, nothing imported."""
    if hparams_file is not None:
        csv = str(hparams_file).lower().endswith(".csv")
        return dict(load_hparams_from_tags_csv(hparams_file) if csv else load_hparams_from_yaml(hparams_file))
    checkpoint = lightning_load(checkpoint_path, map_location="cpu", weights_only=True)
    if hasattr(checkpoint_path, "seek"):
        checkpoint_path.seek(0)
    hparams: dict[str, Any] = {}
    for key in (*CHECKPOINT_PAST_HPARAMS_KEYS, "hyper_parameters"):
        hparams.update(checkpoint.get(key) or {})
    return hparams


def named_classes(options: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every class that ``options`` (a checkpoint's, or a parsed config's as a dict) name for construction, as
    (where, class path): the value of each ``class_path`` at any depth (``{"class_path": ..., "init_args": ...}``,
    how LightningCLI saves ``--model.net``; where: ``net``, ``net.init_args.block``), Lightning's ``_class_path``
    (the module's own class) and ``net`` given as a string (jsonargparse's short form of a class path). Reads the
    values only."""
    if isinstance(options, Mapping):
        for name, value in options.items():
            where = f"{key}.{name}" if key else str(name)
            if name == "class_path":
                yield key or name, str(value)
            elif name == "_class_path" or (name == "net" and isinstance(value, str)):
                yield where, str(value)
            else:
                yield from named_classes(value, where)
    elif isinstance(options, (list, tuple)):
        for i, value in enumerate(options):
            yield from named_classes(value, f"{key}.{i}")


def check_trusted(
    hparams: Mapping[str, Any],
    trusted: Iterable[str],
    path: object,
    opt_in: Callable[[list[tuple[str, str]]], str],
) -> None:
    """Raise ``UntrustedCheckpointError`` when ``hparams``, the options of the checkpoint at ``path``, name a class
    (``named_classes``) that ``trusted`` does not hold: one line naming each such class and where it sits, and
    ``opt_in(untrusted)``, how the user trusts them."""
    trusted = set(trusted)
    untrusted = [(where, name) for where, name in named_classes(hparams) if name not in trusted]
    if not untrusted:
        return
    source = f"checkpoint {path}" if isinstance(path, (str, Path)) else "the checkpoint"
    listing = ", ".join(f"{name} (as {where})" for where, name in untrusted)
    raise UntrustedCheckpointError(
        f"{source} names {listing}, which loading it would import and construct (code the file chooses), so it "
        f"is not loaded; if you trust the file, {opt_in(untrusted)}"
    )


def check_checkpoint_fits(
    checkpoint: Mapping[str, Any],
    hparams: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path | None = None,
) -> None:
    """Raise ``CheckpointMismatchError`` when ``checkpoint`` was made with other network options than ``hparams``
    (naming the first ``--model.<option>`` that differs and both values) or its weights do not fit ``state_dict``
    (naming the first parameter missing, unexpected or of another shape). ``path`` names the checkpoint."""
    where = f"checkpoint {path}" if path else "the checkpoint"
    hint = _hint(path)
    saved = checkpoint.get("hyper_parameters", {})
    differing = _differing_options(saved, hparams)
    if differing:
        option = differing[0]
        source = " (from the data module, --data)" if option in _FROM_DATA else ""
        raise CheckpointMismatchError(
            f"{where} was trained with --model.{option}={show_option(saved.get(option))}, but the options here give "
            f"--model.{option}={show_option(hparams.get(option))}{source}; {hint}"
        )
    weights = checkpoint.get("state_dict")
    if weights is None:
        return
    for name, tensor in state_dict.items():
        if name not in weights:
            raise CheckpointMismatchError(f"{where} has no {name} (a parameter of this network); {hint}")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{where} holds {name} of shape {tuple(weights[name].shape)}, this network's is {tuple(tensor.shape)}; {hint}"
            )
    for name in weights:
        if name not in state_dict:
            raise CheckpointMismatchError(f"{where} holds {name}, which this network does not have; {hint}")


def given_options_differing(
    given: Mapping[str, Any], saved: Mapping[str, Any], key: str = ""
) -> list[tuple[str, Any, Any]]:
    """The options in ``given`` (nested as a parsed config: ``net.init_args.width``) that ``saved``, a checkpoint's
    options, holds with another value, as (where, given value, saved value); an option ``saved`` lacks, and
    jsonargparse's keys of its own (``__path__``), are not compared."""
    differing = []
    for name, value in given.items():
        where = f"{key}.{name}" if key else name
        if name.startswith("__") or name not in saved:
            continue
        if isinstance(value, Mapping) and isinstance(saved[name], Mapping):
            differing += given_options_differing(value, saved[name], where)
        elif _normalised(value) != _normalised(saved[name]):
            differing.append((where, value, saved[name]))
    return differing


def _differing_options(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The network options on which ``saved`` and ``current`` disagree, skipping those that do not apply
    (``arch``, ``hidden``, ``activation`` and the recurrent options when a ``net`` is given; ``hidden`` but for the
    MLP; ``activation`` for the recurrent archs, the recurrent options for the others)."""
    own_net = saved.get("net") is not None or current.get("net") is not None
    differing = []
    for option in _NETWORK_OPTIONS:
        if option not in saved or option not in current:
            continue
        recurrent = current.get("arch") in get_args(Cell)
        if own_net and option in ("arch", "hidden", "activation", *_RECURRENT_OPTIONS):
            continue
        if option == "hidden" and current.get("arch") != "mlp":
            continue
        if (option == "activation" and recurrent) or (option in _RECURRENT_OPTIONS and not recurrent):
            continue
        if option == "vit" and (own_net or current.get("arch") != "vit"):
            continue
        if option == "vit":  # None stands for the defaults
            if _vit_shape(saved[option]) != _vit_shape(current[option]):
                differing.append(option)
            continue
        if _normalised(saved[option]) != _normalised(current[option]):
            differing.append(option)
    return differing


def _vit_shape(value: Any) -> dict[str, Any]:
    """``--model.vit`` as a dict of every field, None (the defaults) included."""
    given = dataclasses.asdict(value) if isinstance(value, ViTOptions) else dict(value or {})
    return {**dataclasses.asdict(ViTOptions()), **given}


def _normalised(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, so that a value read back from YAML compares equal to the original."""
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalised(v) for k, v in value.items()}
    return value


def show_option(value: Any) -> str:
    """An option's value as the command line writes it: a class by its path, a list as ``[1,2]``."""
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"])
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _hint(path: str | Path | None) -> str:
    """How to load the checkpoint with the options it was trained with."""
    config = Path(path).resolve().parent.parent / "config.yaml" if path else None
    if config is not None and config.is_file():
        return f"give the options of the run that made it: --config {config}"
    return "give the options of the run that made it (its config.yaml, with --config)"
