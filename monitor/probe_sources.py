"""Probe sources: the operator's file or factory, read and checked into a ``RawProbe``.

Sources: a ``.pt``/``.pth`` file (``torch.load(weights_only=True)``: a probe file must not be
able to run code), an ``.npz`` file (``allow_pickle=False``, for the same reason), or the
operator's factory ``"module:function"`` returning ``(inputs, targets[, split])``, a dict
with those keys, or a map-style Dataset of ``(input, target)`` pairs, which is materialised.

Whatever the source, ``RawProbe.from_arrays`` converts and checks the arrays the same way:
numeric inputs of shape (N, ...) with finite values, integer class indices as targets (a
probe with float or one-hot labels would load "successfully" and give plausible-looking,
meaningless curves), and a split of ``"train"``/``"val"`` strings or a bool mask. Every
problem is a ``ProbeError`` naming the source and saying what was expected and what was
found. Sampling the fixed per-class subset is ``monitor.probe``'s job.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.config import ProbeConfig
from monitor.errors import ProbeError
from monitor.factory import import_callable

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth")
NUMPY_SUFFIXES = (".npz",)
SPLITS = ("train", "val")
_KEYS = ("inputs", "targets", "split", "is_train")
_LISTED = 8  # how many offending classes or values a message spells out


@dataclass(frozen=True, eq=False)
class RawProbe:
    """Every example of the source, checked but not yet sampled.

    ``targets`` is (N,) int64, ``is_train`` (N,) bool or None. Build it with ``from_arrays``,
    which does the checking, so that sampling can trust what it gets.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    is_train: torch.Tensor | None
    source: str

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def from_arrays(cls, inputs: Any, targets: Any, split: Any = None, *, source: str) -> RawProbe:
        """Convert tensors, arrays or lists and check them; ``split`` is a sequence of
        ``"train"``/``"val"`` strings or a bool mask (True = train), or None."""
        inputs_t = _as_inputs(inputs, source)
        targets_t = _as_targets(targets, source)
        is_train = None if split is None else _as_is_train(split, source)
        lengths = {"inputs": int(inputs_t.shape[0]), "targets": int(targets_t.shape[0])}
        if is_train is not None:
            lengths["split"] = int(is_train.shape[0])
        if len(set(lengths.values())) > 1:
            found = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise ProbeError(
                f"{source}: expected {', '.join(lengths)} to have the same length, got {found}"
            )
        if lengths["inputs"] == 0:
            raise ProbeError(f"{source}: expected at least one example, got none")
        _check_finite(inputs_t, source)
        return cls(inputs_t, targets_t, is_train, source)


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
            f"{source}: calling it with {dict(kwargs)!r} raised {type(exc).__name__}: {exc}"
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
            f"'targets' and optionally 'split' or 'is_train', found {found}"
        )
    if "split" in data and "is_train" in data:
        raise ProbeError(f"{source}: found both 'split' and 'is_train'; expected one of them")
    ignored = [key for key in found if key not in _KEYS]
    if ignored:
        logger.warning("%s: ignoring keys %s (probe keys are %s)", source, ignored, list(_KEYS))
    split = data.get("split", data.get("is_train"))
    return RawProbe.from_arrays(data["inputs"], data["targets"], split, source=source)


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


# --- checks ----------------------------------------------------------------------------------


def _as_inputs(value: Any, source: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ProbeError(
                f"{source}: expected numeric 'inputs', got an array of dtype {value.dtype}"
            )
        value = torch.from_numpy(np.require(value, requirements=["C", "W"]))
    if not isinstance(value, torch.Tensor):
        hint = " (stack them into one tensor: torch.stack)" if isinstance(value, list) else ""
        raise ProbeError(
            f"{source}: expected 'inputs' to be a tensor of shape (N, ...), "
            f"got {type(value).__name__}{hint}"
        )
    if value.dim() == 0:
        raise ProbeError(f"{source}: expected 'inputs' of shape (N, ...), got a 0-d tensor")
    if value.is_complex():
        raise ProbeError(
            f"{source}: expected float features or integer token ids as 'inputs', "
            f"got {_dtype(value)}"
        )
    return value.detach().cpu()


def _as_targets(value: Any, source: str) -> torch.Tensor:
    expected = "'targets' as integer class indices"
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ProbeError(f"{source}: expected {expected}, got an array of dtype {value.dtype}")
        value = torch.from_numpy(np.require(value, requirements=["C", "W"]))
    elif isinstance(value, list | tuple):
        try:
            value = torch.tensor(value, dtype=torch.int64 if not value else None)
        except (TypeError, ValueError, RuntimeError) as exc:
            kinds = sorted({type(v).__name__ for v in value})
            raise ProbeError(
                f"{source}: expected {expected}, got a {type(value).__name__} of {kinds} ({exc})"
            ) from exc
    if not isinstance(value, torch.Tensor):
        raise ProbeError(
            f"{source}: expected {expected} (a tensor or list), got {type(value).__name__}"
        )
    if value.dim() != 1:
        shape = tuple(value.shape)
        hint = ""
        if value.dim() == 2:
            hint = (
                "; these look like one-hot or probability targets: save targets.argmax(dim=1)"
                if shape[1] > 1
                else "; save targets.squeeze(1)"
            )
        raise ProbeError(f"{source}: expected {expected} of shape (N,), got shape {shape}{hint}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        hint = ""
        if value.is_floating_point() and bool(torch.all(value == value.round())):
            hint = " (the values are whole numbers: save targets.long())"
        raise ProbeError(f"{source}: expected {expected}, got {_dtype(value)}{hint}")
    negative = torch.nonzero(value < 0).flatten()
    if negative.numel():
        first = int(negative[0])
        raise ProbeError(
            f"{source}: expected {expected} >= 0, got {negative.numel()} negative "
            f"(first: {int(value[first])} at index {first})"
        )
    return value.detach().cpu().to(torch.int64)


def _as_is_train(value: Any, source: str) -> torch.Tensor:
    """``split`` strings or an ``is_train`` bool mask, as an (N,) bool mask (True = train)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "b":
            value = torch.from_numpy(value.copy())
        elif value.dtype.kind in "US" and value.ndim == 1:
            value = [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        else:
            raise ProbeError(
                f"{source}: expected 'split' as a 1-D array of 'train'/'val' strings or a bool "
                f"mask, got an array of dtype {value.dtype} and shape {value.shape}"
            )
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.bool or value.dim() != 1:
            raise ProbeError(
                f"{source}: expected 'is_train' as a 1-D bool tensor, got {_dtype(value)} "
                f"of shape {tuple(value.shape)}"
            )
        return value.detach().cpu()
    if isinstance(value, list | tuple):
        if all(isinstance(v, bool) for v in value):
            return torch.tensor(value, dtype=torch.bool)
        bad = [(i, v) for i, v in enumerate(value) if v not in SPLITS or not isinstance(v, str)]
        if bad:
            values = sorted({repr(v) for _, v in bad})
            raise ProbeError(
                f"{source}: expected 'split' values 'train' or 'val', found "
                f"{listed(values)} ({len(bad)} examples, first at index {bad[0][0]})"
            )
        return torch.tensor([v == "train" for v in value], dtype=torch.bool)
    raise ProbeError(
        f"{source}: expected 'split' as a list of 'train'/'val' or a bool tensor, "
        f"got {type(value).__name__}"
    )


def _check_finite(inputs: torch.Tensor, source: str) -> None:
    """NaN or inf inputs give NaN gradients, which would poison every class sum they touch."""
    if not (inputs.is_floating_point() or inputs.is_complex()):
        return
    finite = torch.isfinite(inputs).reshape(inputs.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ProbeError(
            f"{source}: expected finite 'inputs', got NaN or inf in {bad.numel()} examples "
            f"(first at index {int(bad[0])})"
        )


# --- helpers ---------------------------------------------------------------------------------


def listed(items: Sequence[Any]) -> str:
    """The first few items, comma-separated, and how many more: messages stay one line."""
    shown = ", ".join(str(item) for item in items[:_LISTED])
    more = len(items) - _LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
