"""``torch.distributed.checkpoint`` (DCP) folders, read in this process without a process group.

DCP is the one format whose reading is a protocol rather than a file parse: a pickled
``.metadata`` index, a storage reader and a load planner. Both of DCP's own entry points
would unpickle freely, so this module vets ``.metadata`` with a restricted unpickler and hands
DCP a reader that serves the vetted copy and a planner that loads non-tensor values
weights-only. Only the model's tensors and the top-level step counters are read; the
optimizer state (often twice the model) never is.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from monitor.checkpoints.pickles import pickle_refusal, refused_global
from monitor.config.schema import CheckpointConfig

_PLAIN_GLOBALS = {  # containers that older DCP metadata pickles may name
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}
_COUNTERS = ("global_step", "step", "epoch")


@dataclass(frozen=True)
class _DcpValue:
    """One saved value of a DCP checkpoint, by its flattened name, before it is read."""

    fqn: str


@dataclass(frozen=True)
class _DcpTensor(_DcpValue):
    """A saved tensor, with what its metadata says about it."""

    size: tuple[int, ...]
    dtype: torch.dtype


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` (a plain pickle) building only what DCP itself writes:
    its dataclasses and enums, ``torch.Size``, dtypes, layouts and paths."""

    def find_class(self, module: str, name: str) -> Any:
        found: Any = None
        if module == "torch" and name == "Size":
            found = torch.Size
        elif module == "torch":
            candidate = getattr(torch, name, None)
            if isinstance(candidate, (torch.dtype, torch.layout, torch.memory_format)):
                found = candidate
        elif (module, name) == ("torch.serialization", "_get_layout"):
            found = getattr(torch.serialization, "_get_layout", None)
        elif (module, name) in _PLAIN_GLOBALS or (
            module in ("pathlib", "pathlib._local") and name.endswith("Path")
        ):
            found = super().find_class(module, name)
        elif module.startswith(("torch.distributed.checkpoint.", "torch.distributed._shard.")):
            candidate = getattr(importlib.import_module(module), name, None)
            if isinstance(candidate, type) and (
                dataclasses.is_dataclass(candidate) or issubclass(candidate, enum.Enum)
            ):
                found = candidate
        if found is None:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
        return found


def _dcp_metadata(path: Path, allow_pickle: bool) -> Any:
    """The checkpoint's ``Metadata``; ``.metadata`` is written last, so no file means the save
    is still running or died before finishing."""
    file = path / ".metadata"
    if not file.is_file():
        raise fail(
            path,
            "incomplete DCP checkpoint: no .metadata file (dcp.save writes it last; the save "
            "is still running or did not finish)",
            "corrupt",
        )
    try:
        with file.open("rb") as handle:
            if allow_pickle:
                return pickle.load(handle)  # the operator trusts this checkpoint
            return _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        if name is not None and not allow_pickle:
            raise pickle_refusal(path, name, ".metadata: ") from exc
        raise fail(path, f".metadata is corrupt ({short(exc)})", "corrupt") from exc
    except (*CORRUPT_ERRORS, AttributeError, ImportError) as exc:
        raise fail(path, f".metadata is corrupt ({short(exc)})", "corrupt") from exc
    except OSError as exc:
        raise os_failure(path, exc, ".metadata: ") from exc


def _dcp_tree(metadata: Any) -> dict[str, Any]:
    """Saved values as the nested dict they were saved from, leaves ``_DcpValue``.

    ``planner_data`` holds each flattened name's original key path when DCP flattened the
    state; without it, the first dot splits a name (``model.fc.weight`` -> model, fc.weight).
    """
    mappings = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    tree: dict[str, Any] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        size = getattr(item, "size", None)
        dtype = getattr(getattr(item, "properties", None), "dtype", None)
        entry = (
            _DcpTensor(fqn, tuple(size), dtype)
            if size is not None and isinstance(dtype, torch.dtype)
            else _DcpValue(fqn)
        )
        keys = mappings.get(fqn)
        parts = (
            [str(key) for key in keys] if isinstance(keys, tuple) and keys else fqn.split(".", 1)
        )
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                node, parts = tree, [fqn]  # a clash: keep this one flat rather than lose it
                break
            node = child
        node[parts[-1]] = entry
    return tree


def _dcp_load(
    path: Path, metadata: Any, template: dict[str, Any], allow_pickle: bool
) -> dict[str, Any]:
    """Fill ``template`` (flattened name -> empty tensor, or None for a pickled value) with
    ``dcp.load`` in this process alone, using the already vetted metadata."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    class VettedReader(FileSystemReader):
        """Serves the metadata read by ``_MetadataUnpickler`` instead of unpickling again."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is not None and hasattr(self, "load_id"):
                metadata.storage_meta.load_id = self.load_id
            return metadata

    class WeightsOnlyPlanner(DefaultLoadPlanner):
        """Loads pickled (non-tensor) values weights-only; DCP's default does not."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, map_location="cpu", weights_only=not allow_pickle)
            values[read_item.dest_index.fqn] = loaded  # the planner's dict may be a copy

    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if "no_dist" in inspect.signature(dcp_load).parameters:
        options["no_dist"] = True  # never join a process group the daemon happens to be in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process"
        dcp_load(
            template,
            storage_reader=VettedReader(path),
            planner=WeightsOnlyPlanner(flatten_state_dict=False),
            **options,
        )
    return {**template, **values}


def read_dcp(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A ``torch.distributed.checkpoint`` folder, read in this process without a process group.

    The state is usually nested (``{"model": ..., "optim": ..., "step": 5}``): only the
    model's tensors and the top-level step counters are read, chosen from the metadata, so the
    optimizer state (often twice the model) is never loaded. Shapes and dtypes come from the
    metadata, so no template of the model is needed; tensors saved sharded across ranks come
    back whole.
    """
    try:
        from torch.distributed.checkpoint.api import CheckpointException
    except ImportError as exc:  # builds without torch.distributed (some macOS/Windows wheels)
        message = f"DCP needs torch.distributed, which this torch build lacks ({exc})"
        raise fail(path, message, "format") from exc
    metadata = _dcp_metadata(path, config.allow_pickle)
    if not hasattr(metadata, "state_dict_metadata"):
        raise fail(path, ".metadata is not DCP metadata", "corrupt")
    tree = _dcp_tree(metadata)
    selected = select_weights(tree, config.state_dict_key, _DcpTensor, path)
    counters = {k: tree[k] for k in _COUNTERS if k in tree}
    counters = {k: entry for k, entry in counters.items() if isinstance(entry, _DcpValue)}
    template: dict[str, Any] = {
        entry.fqn: torch.empty(entry.size, dtype=entry.dtype)
        if isinstance(entry, _DcpTensor)
        else None
        for entry in [*selected.values(), *counters.values()]
    }
    try:
        loaded = _dcp_load(path, metadata, template, config.allow_pickle)
    except CheckpointException as exc:  # DCP gathers each rank's failure into this
        raise fail(path, f"DCP could not read the checkpoint ({short(exc)})", "corrupt") from exc
    except (*CORRUPT_ERRORS, OSError) as exc:
        raise fail(path, f"DCP could not read the checkpoint ({short(exc)})", "corrupt") from exc
    weights = {name: loaded[entry.fqn] for name, entry in selected.items()}
    step, epoch = step_and_epoch({k: loaded[entry.fqn] for k, entry in counters.items()})
    return Payload(format="dcp", state_dict=weights, step=step, epoch=epoch)
