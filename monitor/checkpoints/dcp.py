"""``torch.distributed.checkpoint`` (DCP) folders, read in this process without a process group.

DCP is the one format whose reading is a protocol rather than a file parse: a pickled
``.metadata`` index, a storage reader and a load planner. Both of DCP's own entry points
would unpickle freely, so ``dcp_index`` reads and checks ``.metadata`` and what it points to,
and this module hands DCP a reader that serves the vetted copy and a planner that loads
non-tensor values weights-only. Only the model's tensors and the top-level step counters are
read; the optimizer state (often twice the model) never is.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monitor.checkpoints.dcp_index import check_storage, read_metadata, tensor_entry
from monitor.checkpoints.payload import (
    CORRUPT_ERRORS,
    Payload,
    fail,
    select_weights,
    short,
    step_and_epoch,
)
from monitor.config.schema import CheckpointConfig

_COUNTERS = ("global_step", "step", "epoch")
_KEY_PATH_LIMIT = 64  # levels of one planner_data key path; a state dict nests a few


@dataclass(frozen=True)
class _DcpValue:
    """One saved value of a DCP checkpoint, by its flattened name, before it is read."""

    fqn: str


@dataclass(frozen=True)
class _DcpTensor(_DcpValue):
    """A saved tensor, with what its metadata says about it."""

    size: tuple[int, ...]
    dtype: torch.dtype


def _key_path(fqn: str, keys: Any) -> list[str]:
    """Where ``fqn`` sat in the saved state: ``planner_data``'s key path when DCP flattened
    the state (a short tuple of names and list indices), else split at the first dot."""
    short_path = type(keys) is tuple and 0 < len(keys) <= _KEY_PATH_LIMIT
    if short_path and all(type(key) in (str, int) for key in keys):
        return [str(key) for key in keys]
    return fqn.split(".", 1)


def _dcp_tree(metadata: Any) -> dict[str, Any]:
    """Saved values as the nested dict they were saved from, leaves ``_DcpValue``.

    ``planner_data`` holds each flattened name's original key path when DCP flattened the
    state; without it, the first dot splits a name (``model.fc.weight`` -> model, fc.weight).
    """
    mappings = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    tree: dict[str, Any] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        tensor = tensor_entry(item)
        entry = _DcpValue(fqn) if tensor is None else _DcpTensor(fqn, tuple(tensor[0]), tensor[1])
        parts = _key_path(fqn, mappings.get(fqn))
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
        """Serves the metadata ``read_metadata`` vetted instead of unpickling again."""

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
    metadata = read_metadata(path, config.allow_pickle)
    try:
        tree = _dcp_tree(metadata)
    except ValueError as exc:
        raise fail(path, f".metadata is corrupt ({short(exc)})", "corrupt") from exc
    selected = select_weights(tree, config.state_dict_key, _DcpTensor, path)
    counters = {k: tree[k] for k in _COUNTERS if k in tree}
    counters = {k: entry for k, entry in counters.items() if isinstance(entry, _DcpValue)}
    entries = [*selected.values(), *counters.values()]
    tensors = [entry for entry in entries if isinstance(entry, _DcpTensor)]
    claimed = sum(math.prod(entry.size) * entry.dtype.itemsize for entry in tensors)
    check_storage(path, metadata, {entry.fqn for entry in entries}, claimed)
    try:
        template: dict[str, Any] = {
            entry.fqn: torch.empty(entry.size, dtype=entry.dtype)
            if isinstance(entry, _DcpTensor)
            else None
            for entry in entries
        }
        loaded = _dcp_load(path, metadata, template, config.allow_pickle)
    except CheckpointException as exc:  # DCP gathers each rank's failure into this
        raise fail(path, f"DCP could not read the checkpoint ({short(exc)})", "corrupt") from exc
    except (*CORRUPT_ERRORS, OSError) as exc:
        raise fail(path, f"DCP could not read the checkpoint ({short(exc)})", "corrupt") from exc
    weights = {name: loaded[entry.fqn] for name, entry in selected.items()}
    step, epoch = step_and_epoch({k: loaded[entry.fqn] for k, entry in counters.items()})
    return Payload(format="dcp", state_dict=weights, step=step, epoch=epoch)
