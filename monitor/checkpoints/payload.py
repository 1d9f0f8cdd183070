"""What every checkpoint reader returns, and the helpers all of them share.

Each reader (``pickles``, ``huggingface``, ``programs``, ``dcp``) turns a path into a
``Payload``: weights or a module, and the step. The rule every reader follows for failures
lives here: every failure is a ``CheckpointError`` whose message starts with the path and
whose ``reason`` token (``missing``, ``corrupt``, ``pickle``, ``format``) labels the error
metric. The exceptions caught are the ones each library raises for bad bytes
(``CORRUPT_ERRORS``); anything else is a bug and keeps its traceback. The helpers that find
the weights and the step inside a loaded payload are shared here too, since every weight
format stores them the same few ways.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from monitor.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
STEP_KEYS = ("global_step", "step")
CORRUPT_ERRORS = (  # what loaders raise for bytes that make no sense
    RuntimeError,  # torch's zip reader: "failed finding central directory", bad records
    EOFError,
    pickle.UnpicklingError,
    ValueError,  # includes UnicodeDecodeError from mangled pickled strings
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    zipfile.BadZipFile,
    OverflowError,
)
ZIP_ERRORS = (  # what zipfile raises for a damaged archive, besides OSError
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    ValueError,  # a name that is not the UTF-8 its flags claim (UnicodeDecodeError)
    NotImplementedError,  # a version or compression method it cannot read
    RuntimeError,  # an encrypted member
)
Leaf = TypeVar("Leaf")
_FLATTEN_LIMIT = 1 << 20  # entries walked to find the weights; a checkpoint has thousands


@dataclass(frozen=True, eq=False)
class Payload:
    """What one reader found: weights (``state_dict``) or a whole ``module``, and the step."""

    format: str
    state_dict: dict[str, torch.Tensor] | None = None
    module: torch.nn.Module | None = None
    step: int | None = None
    epoch: int | None = None


def fail(path: Path, message: str, reason: str) -> CheckpointError:
    """A ``CheckpointError`` whose message starts with the path, as every one of ours does."""
    return CheckpointError(f"{path}: {message}", reason=reason)


def short(exc: BaseException) -> str:
    """The first line of a library's message: torch's run to paragraphs of advice."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else type(exc).__name__
    return first if len(first) <= 240 else first[:237] + "..."


def os_failure(path: Path, exc: OSError, where: str = "") -> CheckpointError:
    """A file that vanished or may not be read is ``missing``; any other ``OSError`` from a
    loader (torch's legacy reader seeks past the end of a truncated file: EINVAL) is bytes
    that make no sense, so ``corrupt``."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return fail(path, f"{where}cannot read the checkpoint ({exc})", "missing")
    return fail(path, f"{where}truncated or corrupt ({exc})", "corrupt")


# --- values inside payloads -------------------------------------------------------------


def as_int(value: object) -> int | None:
    """A non-negative whole number from an int, integral float, digit string or 1-element
    integer tensor (trainers store steps in all of these); anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            return None
        if value.dtype == torch.bool:
            return None
        value = int(value.item())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, bytes)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        value = int(text.strip()) if text.strip().isdigit() else None
    return value if isinstance(value, int) and value >= 0 else None


def step_and_epoch(values: Mapping[Any, Any]) -> tuple[int | None, int | None]:
    """``(step, epoch)`` from a payload's own counters.

    ``global_step`` wins over ``step`` (Lightning and most loops count optimizer steps in
    ``global_step``). ``epoch`` is always returned as the epoch, and doubles as the step only
    when neither step key exists, so that epoch-wise checkpoints still sort and plot in order.
    """
    epoch = as_int(values.get("epoch"))
    for key in STEP_KEYS:
        step = as_int(values.get(key))
        if step is not None:
            return step, epoch
    return epoch, epoch


class _Sprawling(ValueError):
    """Nested values that would take more than ``_FLATTEN_LIMIT`` entries to walk."""


def flatten(tree: Mapping[Any, Any], leaf: type[Leaf], prefix: str = "") -> dict[str, Leaf]:
    """Leaves of a nested mapping under dotted names: ``{"enc": {"w": t}}`` -> ``{"enc.w": t}``.

    Non-leaf values (step counters, strings, lists) are skipped: they are not weights. The
    walk keeps its own stack, skips a mapping that holds itself, and stops (``_Sprawling``)
    past ``_FLATTEN_LIMIT`` entries, for mappings shared level after level multiply.
    """
    found: dict[str, Leaf] = {}
    walking: list[tuple[Iterator[tuple[Any, Any]], str, int]] = [
        (iter(tree.items()), prefix, id(tree))
    ]
    on_path = {id(tree)}
    visited = 0
    while walking:
        entries, base, _ = walking[-1]
        for key, value in entries:
            visited += 1
            if visited > _FLATTEN_LIMIT:
                raise _Sprawling(f"nested values of over {_FLATTEN_LIMIT} entries")
            name = f"{base}{key}"
            if isinstance(value, leaf):
                found[name] = value
            elif isinstance(value, Mapping) and id(value) not in on_path:
                walking.append((iter(value.items()), name + ".", id(value)))
                on_path.add(id(value))
                break
        else:
            on_path.discard(walking.pop()[2])
    return found


def select_weights(
    tree: Mapping[Any, Any], key: str | None, leaf: type[Leaf], path: Path
) -> dict[str, Leaf]:
    """The model's weights inside a checkpoint's top-level dict.

    In order: the configured ``state_dict_key`` (a dotted path into nested dicts works too);
    the first of ``WRAPPER_KEYS`` holding weights; the top-level weights themselves (a raw
    state dict, possibly with a step counter beside it); else every nested weight, flattened,
    so that e.g. ``{"generator": ..., "discriminator": ...}`` can be told apart by prefix
    when the weights are matched to the model.
    """
    try:
        return _select_weights(tree, key, leaf, path)
    except _Sprawling as exc:
        raise fail(path, str(exc), "corrupt") from exc


def _select_weights(
    tree: Mapping[Any, Any], key: str | None, leaf: type[Leaf], path: Path
) -> dict[str, Leaf]:
    if key is not None:
        value: Any = tree.get(key)
        if value is None and "." in key:
            value = tree
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
        found = flatten(value, leaf) if isinstance(value, Mapping) else {}
        if not found:
            keys = ", ".join(sorted(map(str, tree))[:12])
            raise fail(
                path,
                f"checkpoint.state_dict_key {key!r} holds no weights; top-level keys: {keys}",
                "format",
            )
        return found
    for name in WRAPPER_KEYS:
        value = tree.get(name)
        found = flatten(value, leaf) if isinstance(value, Mapping) else {}
        if found:
            return found
    top = {str(name): value for name, value in tree.items() if isinstance(value, leaf)}
    found = top or flatten(tree, leaf)
    if not found:
        keys = ", ".join(sorted(map(str, tree))[:12]) or "none"
        raise fail(
            path,
            "no state dict found: no tensors at the top level or under "
            f"{', '.join(WRAPPER_KEYS)} (top-level keys: {keys}); "
            "set checkpoint.state_dict_key to the key that holds the weights",
            "format",
        )
    return found
