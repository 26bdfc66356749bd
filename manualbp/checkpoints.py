"""Does a checkpoint fit the network it is loaded into? One line saying which option differs, instead of
torch's state-dict traceback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import torch

from manualbp.models import Cell

# The ClassifierModule options that decide the network's shape and layers; backend and dropout do not
# (a checkpoint of either backend loads into the other).
_NETWORK_OPTIONS = ("arch", "net", "hidden", "activation", "hidden_size", "num_layers", "bidirectional", "in_shape", "num_classes")
# Options of the recurrent archs only.
_RECURRENT_OPTIONS = ("hidden_size", "num_layers", "bidirectional")
# Options the manualbp command links from the data module.
_FROM_DATA = ("in_shape", "num_classes")


class CheckpointMismatchError(ValueError):
    """A checkpoint made by another network than the one it is loaded into."""


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
            f"{where} was trained with --model.{option}={_show(saved.get(option))}, but the options here give "
            f"--model.{option}={_show(hparams.get(option))}{source}; {hint}"
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
        if _normalised(saved[option]) != _normalised(current[option]):
            differing.append(option)
    return differing


def _normalised(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, so that a value read back from YAML compares equal to the original."""
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalised(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
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
