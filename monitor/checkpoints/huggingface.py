"""safetensors files and Hugging Face folders, the formats written by ``transformers``.

A safetensors file is a JSON header and raw tensors, so reading one runs no code; its header
metadata may carry the step. A Hugging Face folder holds ``model.safetensors`` or
``pytorch_model.bin`` (``HF_FILES``, in ``transformers``' order of preference), whole or
sharded behind an ``*.index.json``, and HF Trainer keeps the step in ``trainer_state.json``.
``.bin`` shards are ``torch.save`` files and are loaded weights-only like any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from monitor.checkpoints.payload import (
    Payload,
    fail,
    os_failure,
    select_weights,
    short,
    step_and_epoch,
)
from monitor.checkpoints.pickles import torch_load
from monitor.config.schema import CheckpointConfig

HF_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_safetensors_file(file: Path, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the header's string metadata of one ``.safetensors`` file."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        where = "" if file == path else f"{file.name}: "
        raise fail(
            path, f"{where}truncated or corrupt safetensors ({short(exc)})", "corrupt"
        ) from exc
    except OSError as exc:
        raise os_failure(path, exc, "" if file == path else f"{file.name}: ") from exc
    return tensors, dict(metadata)


def read_safetensors(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A single ``.safetensors`` file; its header metadata may carry ``step``/``epoch``."""
    tensors, metadata = read_safetensors_file(path, path)
    step, epoch = step_and_epoch(metadata)
    return Payload(format="safetensors", state_dict=tensors, step=step, epoch=epoch)


def _read_json(file: Path, path: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise fail(path, f"{file.name} not found", "missing") from exc
    except (ValueError, OSError) as exc:
        raise fail(path, f"{file.name} is not readable JSON ({short(exc)})", "corrupt") from exc


def _shard_files(index_file: Path, path: Path) -> list[Path]:
    """The shard files an HF ``*.index.json`` names in its ``weight_map``, in first-use order.

    Shard names must be plain file names in the folder: an index must not point elsewhere.
    """
    index = _read_json(index_file, path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise fail(path, f"{index_file.name} has no weight_map", "corrupt")
    shards: list[Path] = []
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise fail(path, f"{index_file.name} names an invalid shard {shard!r}", "corrupt")
        shards.append(path / shard)
    return shards


def _trainer_state(path: Path) -> tuple[int | None, int | None]:
    """HF Trainer's ``trainer_state.json`` (``global_step``, ``epoch``) when the folder has one.

    It is auxiliary: an unreadable one leaves the step to the folder name, not an error.
    """
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    return step_and_epoch(state) if isinstance(state, dict) else (None, None)


def read_hf(path: Path, config: CheckpointConfig, detected: str) -> Payload:
    """A Hugging Face folder: ``model.safetensors`` or ``pytorch_model.bin``, whole or sharded.

    Preference follows ``transformers``: safetensors before pickles, one file before an index.
    """
    name = next((name for name in HF_FILES if (path / name).is_file()), None)
    if name is None:
        expected = ", ".join(HF_FILES)
        raise fail(path, f"no Hugging Face weights here (expected one of {expected})", "format")
    files = _shard_files(path / name, path) if name.endswith(".index.json") else [path / name]
    weights: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for file in files:
        if not file.is_file():  # the folder is here, so this is an incomplete copy, not a deletion
            message = f"shard {file.name} named by {name} is missing (incomplete checkpoint)"
            raise fail(path, message, "corrupt")
        if file.suffix == ".safetensors":
            tensors, meta = read_safetensors_file(file, path)
            metadata.update(meta)
        else:
            payload = torch_load(file, path, config.allow_pickle, where=f"{file.name}: ")
            if not isinstance(payload, Mapping):
                raise fail(path, f"{file.name}: expected a dict of tensors", "format")
            tensors = select_weights(payload, None, torch.Tensor, path)  # never wrapped
        weights.update(tensors)
    step, epoch = _trainer_state(path)
    if step is None:
        step, epoch = step_and_epoch(metadata)
    return Payload(format="hf", state_dict=weights, step=step, epoch=epoch)
