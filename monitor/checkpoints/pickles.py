"""Pickles, read without running their code: ``torch.save`` files and the rule that guards them.

Nothing from a file runs code unless ``checkpoint.allow_pickle`` says the operator trusts it.
``torch.load`` always runs with ``weights_only=True`` (``torch_load``, which the Hugging Face
``.bin`` and ``torch.export`` readers use too), after ``pickle_scan`` has checked that the
pickles cannot crash or stall it (``vet_cost``). Formats whose own loaders unpickle freely
are vetted first: ``torch.export`` archives with ``pickle_globals``, DCP's ``.metadata`` by
``dcp_unpickler``; the refusal message is kept here. A refused file names the global it
needed, because that is what tells the operator whether the file is merely unusual (an
``argparse.Namespace`` of hyperparameters) or hostile. ``read_torch_save`` reads plain,
wrapped and Lightning ``torch.save`` checkpoints.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from monitor.checkpoints.payload import (
    CORRUPT_ERRORS,
    Payload,
    fail,
    os_failure,
    select_weights,
    short,
    step_and_epoch,
)
from monitor.checkpoints.pickle_scan import scan_torch_save
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError

LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
_REFUSED = re.compile(  # torch 2.4-2.13 wordings of "this pickle needs that global"
    r"GLOBAL ([\w.]+)|Unsupported class:? ([\w.]+)|unrecognized function ([\w.<>' ]+)"
    r"|but got (<class '[\w.]+'>)"
)


def is_lightning(payload: Mapping[Any, Any]) -> bool:
    """Lightning writes its version; a bare ``state_dict`` + ``global_step`` pair is its shape."""
    return LIGHTNING_VERSION_KEY in payload or (
        "state_dict" in payload and "global_step" in payload
    )


def refused_global(message: str) -> str | None:
    """The global a weights-only unpickler refused, from its error text (torch 2.4-2.13)."""
    match = _REFUSED.search(message)
    if match is None:
        return None
    return next(group for group in match.groups() if group).strip()


def pickle_refusal(
    path: Path, name: str, where: str = "", kind: str = "global "
) -> CheckpointError:
    """The one message for "this file needs full unpickling", wherever it was found; ``name``
    is the global refused, or with ``kind=""`` what else was (``BUILD on the class X``)."""
    return fail(
        path,
        f"{where}needs full unpickling to load (refused {kind}{name}); set "
        "checkpoint.allow_pickle: true only if you trust this file, since unpickling can "
        "run arbitrary code",
        "pickle",
    )


def vet_cost(source: Path | IO[bytes], path: Path, where: str = "") -> None:
    """Refuse a ``torch.save`` file whose pickles would crash or stall the weights-only
    unpickler (``monitor.checkpoints.pickle_scan``): reason ``corrupt``."""
    try:
        if isinstance(source, Path):
            with source.open("rb") as handle:
                problem = scan_torch_save(handle)
        else:
            problem = scan_torch_save(source)
    except OSError as exc:
        raise os_failure(path, exc, where) from exc
    if problem is not None:
        raise fail(path, f"{where}not loaded: {problem}", "corrupt")


def torch_load(source: Path | IO[bytes], path: Path, allow_pickle: bool, where: str = "") -> Any:
    """``torch.load`` onto the CPU, weights-only unless the operator trusts the file.

    ``source`` is the file, or a member read from an archive (``where`` then names it).
    Weights-only loading is vetted for cost first (``vet_cost``).
    """
    if not allow_pickle:
        vet_cost(source, path, where)
    try:
        return torch.load(source, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        if name is not None and not allow_pickle:
            raise pickle_refusal(path, name, where) from exc
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except (ImportError, AttributeError) as exc:
        if allow_pickle:  # the pickle names a module or class this environment lacks
            message = f"{where}unpickling needs code this environment lacks ({short(exc)})"
            raise fail(path, message, "pickle") from exc
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except (*CORRUPT_ERRORS, AssertionError) as exc:  # torch asserts on legacy storage keys
        raise fail(path, f"{where}truncated or corrupt ({short(exc)})", "corrupt") from exc
    except OSError as exc:
        raise os_failure(path, exc, where) from exc


def read_torch_save(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """``torch.save`` files: raw state dicts, wrapping dicts, Lightning ``.ckpt`` files.

    With ``format: auto`` the payload decides between ``state_dict`` and ``lightning``
    whatever the suffix; a configured format is reported as configured.
    """
    payload = torch_load(path, path, config.allow_pickle)
    if isinstance(payload, torch.nn.Module):  # torch.save(model), loadable only when trusted
        weights = {k: v for k, v in payload.state_dict().items() if isinstance(v, torch.Tensor)}
        return Payload(format=detected, state_dict=weights)
    if not isinstance(payload, Mapping):
        raise fail(path, f"expected a dict of tensors, got a {type(payload).__name__}", "format")
    payload = {  # {"model": model} pickles, too, when trusted
        key: value.state_dict() if isinstance(value, torch.nn.Module) else value
        for key, value in payload.items()
    }
    if config.format == "auto":
        detected = "lightning" if is_lightning(payload) else "state_dict"
    weights = select_weights(payload, config.state_dict_key, torch.Tensor, path)
    step, epoch = step_and_epoch(payload)
    return Payload(format=detected, state_dict=weights, step=step, epoch=epoch)


def pickle_globals(data: bytes) -> list[str] | None:
    """The globals a complete pickle would import, or None when ``data`` is not one.

    Only a stream that parses to its final STOP counts, so raw tensor bytes that happen to
    start like a pickle are not mistaken for one.
    """
    names: list[str] = []
    strings: list[str] = []
    end = 0
    try:
        for opcode, arg, position in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
            end = position if position is not None else end
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return None
    return names if end == len(data) - 1 else None
