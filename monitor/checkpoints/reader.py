"""Checkpoint reading: every common way a PyTorch job saves weights, to one typed value.

A sidecar does not choose how the trainer saves, so it reads what trainers write: plain
``torch.save`` state dicts and the dicts that wrap them, Lightning ``.ckpt`` files,
safetensors files, Hugging Face folders (whole or sharded), ``torch.distributed.checkpoint``
folders, TorchScript archives and ``torch.export`` programs. ``read_checkpoint`` turns any of
them into a ``LoadedCheckpoint`` (weights or a self-describing module, plus the training step).

The file formats themselves are read in ``monitor.checkpoints.pickles``,
``monitor.checkpoints.huggingface``, ``monitor.checkpoints.programs`` and
``monitor.checkpoints.dcp``; this module detects the format, picks the reader and finds the
step (``monitor.checkpoints.loading`` fits the weights to the model). Nothing in a checkpoint
runs code unless ``checkpoint.allow_pickle`` is set, and every failure is a
``CheckpointError`` naming the path, with a ``reason`` token for the error metric:
``missing``, ``corrupt``, ``pickle`` or ``format``.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from monitor.checkpoints.dcp import read_dcp
from monitor.checkpoints.huggingface import HF_FILES, read_hf, read_safetensors
from monitor.checkpoints.payload import ZIP_ERRORS, Payload, fail
from monitor.checkpoints.pickles import read_torch_save
from monitor.checkpoints.programs import read_export, read_torchscript
from monitor.config.schema import CheckpointConfig

FOLDER_FORMATS = ("hf", "dcp")
SELF_DESCRIBING = ("torchscript", "export")
Reader = Callable[[Path, CheckpointConfig, str], Payload]

READERS: dict[str, Reader] = {  # format -> reader; ``auto`` is resolved by detect_format first
    "state_dict": read_torch_save,
    "lightning": read_torch_save,
    "safetensors": read_safetensors,
    "hf": read_hf,
    "dcp": read_dcp,
    "torchscript": read_torchscript,
    "export": read_export,
}


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """One checkpoint, read: weights (``state_dict``) or a whole ``module``, and its step.

    ``format`` is the resolved format, never ``auto``. ``state_dict`` keys are as in the file;
    ``load_weights`` lines them up with the model's. ``step_source`` says where ``step`` came
    from: the checkpoint's own counters (``payload``), its file or folder name (``filename``),
    or nowhere (``none``: the daemon then orders checkpoints by file order).
    """

    path: Path
    format: str
    step: int | None
    step_source: Literal["payload", "filename", "none"]
    state_dict: dict[str, torch.Tensor] | None
    module: nn.Module | None
    epoch: int | None = None


def step_from_name(path: Path, step_regex: str) -> int | None:
    """The step in a file or folder name: the first group of the regex's last match.

    The last match, because names such as ``run-step_3/epoch=1-step=500`` grow to the right.
    """
    step = None
    for match in re.finditer(step_regex, Path(path).name):
        group = match.group(1) if match.re.groups else None
        if group is not None and group.isdigit():
            step = int(group)
    return step


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (*ZIP_ERRORS, OSError):  # damaged: the reader that tries it says how
        return None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (u64, little-endian) and then ``{``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length <= size - 8


def detect_format(path: Path) -> str:
    """The format of a checkpoint, from its layout and first bytes; never ``auto``.

    Folders: a ``.metadata`` file or ``*.distcp`` shards mean DCP, the ``transformers`` weight
    files mean ``hf``. Files: a zip archive with TorchScript's ``constants.pkl``/``code/`` or
    ``torch.export``'s ``archive_format`` is one of those; safetensors is recognised by its
    header; ``.pt2``, ``.safetensors`` and ``.ckpt`` then go by suffix; anything else is a
    ``torch.save`` state dict. Reading refines ``state_dict``/``lightning`` from the payload,
    and a truncated or unknown file is reported by the reader that tries it.
    """
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").is_file() or any(path.glob("*.distcp")):
            return "dcp"
        if any((path / name).is_file() for name in HF_FILES):
            return "hf"
        raise fail(
            path,
            "not a checkpoint folder: expected a DCP folder (.metadata) or a Hugging Face "
            f"folder ({', '.join(HF_FILES)})",
            "format",
        )
    if not path.exists():
        raise fail(path, "checkpoint not found", "missing")
    names = _zip_names(path)
    if names is not None:
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names):
            return "export"
    elif _looks_like_safetensors(path):
        return "safetensors"
    suffix = path.suffix.lower()
    by_suffix = {".safetensors": "safetensors", ".pt2": "export", ".ckpt": "lightning"}
    return by_suffix.get(suffix, "state_dict")


def read_checkpoint(path: str | Path, config: CheckpointConfig) -> LoadedCheckpoint:
    """Read one checkpoint with the configured (or detected) format.

    No format needs the model to be read: DCP's metadata records every shape and dtype.
    """
    path = Path(path).expanduser()
    if path.name == ".metadata" or path.name.endswith(".index.json"):
        path = path.parent  # a DCP or sharded HF checkpoint, named by its index file
    if not path.exists():
        raise fail(path, "checkpoint not found", "missing")
    if not path.is_dir() and not path.is_file():  # a FIFO or device: reading it may never end
        raise fail(path, "not a regular file or folder", "format")
    fmt = detect_format(path) if config.format == "auto" else config.format
    if (fmt in FOLDER_FORMATS) != path.is_dir():
        expected = "a folder" if fmt in FOLDER_FORMATS else "a file"
        raise fail(path, f"a {fmt} checkpoint is {expected}; check checkpoint.format", "format")
    payload = READERS[fmt](path, config, fmt)
    step = payload.step
    source: Literal["payload", "filename", "none"] = "payload"
    if step is None:
        step = step_from_name(path, config.step_regex)
        source = "none" if step is None else "filename"
    return LoadedCheckpoint(
        path=path,
        format=payload.format,
        step=step,
        step_source=source,
        state_dict=payload.state_dict,
        module=payload.module,
        epoch=payload.epoch,
    )
