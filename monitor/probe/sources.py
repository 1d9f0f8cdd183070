"""Probe sources: the operator's file or factory, read into a ``RawProbe``.

Sources: a ``.pt``/``.pth`` file (``torch.load(weights_only=True)``: a probe file must not be
able to run code), an ``.npz`` file (``allow_pickle=False``, for the same reason), or the
operator's factory ``"module:function"`` returning ``(inputs, targets[, split])``, a dict
with those keys, or a map-style Dataset of ``(input, target)`` pairs, which is materialised.

This module finds the arrays and says what is wrong with the file or the factory's result;
the arrays themselves are converted and checked by ``RawProbe.from_arrays``
(``monitor.probe.raw``), the same way for every source. Every problem is a ``ProbeError``
naming the source and saying what was expected and what was found. Sampling the fixed
per-class subset is ``monitor.probe.sampling``'s job.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.config.factory import import_callable
from monitor.config.quoting import short
from monitor.config.schema import ProbeConfig
from monitor.errors import ProbeError
from monitor.probe.raw import RawProbe

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth")
NUMPY_SUFFIXES = (".npz",)
_KEYS = ("inputs", "targets", "split", "is_train", "token_targets", "attention_mask")


def read_probe_source(config: ProbeConfig) -> RawProbe:
    """Every example of the configured file or factory, checked, before sampling."""
    if config.path is not None:
        return _read_file(config.path)
    if config.factory is None:  # ProbeConfig guarantees one of the two
        raise ProbeError("probe: expected exactly one of 'path' or 'factory'")
    return _read_factory(config.factory, config.kwargs)


# --- sources ---------------------------------------------------------------------------------


def _read_file(path: Path) -> RawProbe:
    source = str(path)
    if not path.exists():
        raise ProbeError(f"{source}: probe file not found")
    if not path.is_file():
        raise ProbeError(f"{source}: expected a probe file, found a directory or special file")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        fields = _load_torch(path, source)
    elif suffix in NUMPY_SUFFIXES:
        fields = _load_npz(path, source)
    else:
        expected = ", ".join(TORCH_SUFFIXES + NUMPY_SUFFIXES)
        raise ProbeError(f"{source}: unknown probe file suffix {suffix!r}; expected {expected}")
    return _from_mapping(fields, source)


def _load_torch(path: Path, source: str) -> Mapping[Any, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe:
            raise ProbeError(
                f"{source}: torch.load(weights_only=True) refused {unsafe.group(1)}; a probe "
                "file may hold only tensors, lists, strings and numbers"
            ) from exc
        raise ProbeError(
            f"{source}: cannot read it as a torch.save file ({_first_line(exc)})"
        ) from exc
    except Exception as exc:  # torch reports corrupt files as KeyError, EOFError, RuntimeError
        raise ProbeError(
            f"{source}: cannot read it as a torch.save file, it is truncated or corrupt "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(data, Mapping):
        raise ProbeError(
            f"{source}: expected a dict with 'inputs' and 'targets', got {type(data).__name__}"
        )
    return data


def _load_npz(path: Path, source: str) -> Mapping[Any, Any]:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy reports non-archives as ValueError, EOFError, BadZipFile
        raise ProbeError(
            f"{source}: cannot read it as an .npz archive, it is truncated or corrupt "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ProbeError(
            f"{source}: expected an .npz archive of named arrays (numpy.savez), "
            "got a single .npy array"
        )
    with data:
        fields: dict[str, Any] = {}
        for key in data.files:
            try:
                fields[key] = data[key]
            except ValueError as exc:
                raise ProbeError(
                    f"{source}: array {key!r} holds Python objects, which allow_pickle=False "
                    "refuses; save strings as a fixed-width array (numpy.array(values, dtype=str))"
                ) from exc
            except Exception as exc:
                raise ProbeError(
                    f"{source}: cannot read array {key!r}, the archive is corrupt "
                    f"({type(exc).__name__}: {_first_line(exc)})"
                ) from exc
    return fields


def _read_factory(spec: str, kwargs: Mapping[str, Any]) -> RawProbe:
    source = f"probe factory {spec}"
    function = import_callable(spec, error=ProbeError, what="probe factory")
    try:
        result = function(**dict(kwargs))
    except Exception as exc:  # the factory is the operator's code
        raise ProbeError(
            f"{source}: calling it with {short(dict(kwargs))} raised {type(exc).__name__}: {exc}"
        ) from exc
    return _from_object(result, source)


def _from_object(result: Any, source: str) -> RawProbe:
    expected = "(inputs, targets[, split]), a dict with 'inputs' and 'targets', or a Dataset"
    if isinstance(result, Mapping):
        return _from_mapping(result, source)
    if isinstance(result, tuple):
        if len(result) not in (2, 3):
            raise ProbeError(f"{source}: expected {expected}, got a tuple of {len(result)}")
        return RawProbe.from_arrays(*result, source=source)
    if isinstance(result, torch.Tensor | np.ndarray | str | bytes):
        raise ProbeError(f"{source}: expected {expected}, got a single {type(result).__name__}")
    if hasattr(result, "__len__") and hasattr(result, "__getitem__"):
        return _from_dataset(result, source)
    raise ProbeError(
        f"{source}: expected {expected} (map-style: __len__ and __getitem__), "
        f"got {type(result).__name__}"
    )


def _from_mapping(data: Mapping[Any, Any], source: str) -> RawProbe:
    found = sorted(str(key) for key in data)
    missing = [key for key in ("inputs", "targets") if key not in data]
    if missing:
        raise ProbeError(
            f"{source}: missing {' and '.join(map(repr, missing))}; expected keys 'inputs', "
            f"'targets' and optionally 'split' or 'is_train', found {found} ('token_targets' "
            "and 'attention_mask' too, for sequence losses)"
        )
    if "split" in data and "is_train" in data:
        raise ProbeError(f"{source}: found both 'split' and 'is_train'; expected one of them")
    ignored = [key for key in found if key not in _KEYS]
    if ignored:
        logger.warning("%s: ignoring keys %s (probe keys are %s)", source, ignored, list(_KEYS))
    split = data.get("split", data.get("is_train"))
    return RawProbe.from_arrays(
        data["inputs"], data["targets"], split, source=source,
        token_targets=data.get("token_targets"), attention_mask=data.get("attention_mask"),
    )  # fmt: skip


def _from_dataset(dataset: Any, source: str) -> RawProbe:
    """Materialise a map-style Dataset by stacking its items: the probe is small and fixed,
    and the engine wants one tensor, not a loader."""
    n = len(dataset)
    if n == 0:
        raise ProbeError(f"{source}: expected at least one example, the Dataset is empty")
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for i in range(n):
        try:
            item = dataset[i]
        except Exception as exc:
            raise ProbeError(
                f"{source}: dataset[{i}] raised {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ProbeError(
                f"{source}: dataset[{i}]: expected an (input, target) pair, "
                f"got {type(item).__name__}"
            )
        x, y = (_item_tensor(value, f"{source}: dataset[{i}]") for value in item)
        if inputs and x.shape != inputs[0].shape:
            raise ProbeError(
                f"{source}: dataset[{i}]: expected every input to have shape "
                f"{tuple(inputs[0].shape)} (as dataset[0]), got {tuple(x.shape)}"
            )
        if y.numel() != 1:
            raise ProbeError(
                f"{source}: dataset[{i}]: expected a scalar integer class index as target, "
                f"got shape {tuple(y.shape)}; for one-hot targets use target.argmax()"
            )
        inputs.append(x)
        targets.append(y.reshape(()))
    return RawProbe.from_arrays(torch.stack(inputs), torch.stack(targets), source=source)


def _item_tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray | np.generic | int | float) and not isinstance(value, bool):
        return torch.as_tensor(value)
    raise ProbeError(f"{where}: expected tensors or numbers, got {type(value).__name__}")


# --- helpers ---------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
