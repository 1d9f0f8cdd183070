"""Checkpoint loading: every common way a PyTorch job saves weights, to one typed value.

A sidecar does not choose how the trainer saves, so it reads what trainers write: plain
``torch.save`` state dicts and the dicts that wrap them, Lightning ``.ckpt`` files,
safetensors files, Hugging Face folders (whole or sharded), ``torch.distributed.checkpoint``
folders, TorchScript archives and ``torch.export`` programs. ``read_checkpoint`` turns any of
them into a ``LoadedCheckpoint`` (weights or a self-describing module, plus the training step),
and ``load_weights`` puts weights into the operator's model, lining up the key prefixes that
DDP (``module.``), ``torch.compile`` (``_orig_mod.``) and Lightning (``model.``) add.

The file formats themselves are read in ``monitor.checkpoint_formats`` (and DCP folders in
``monitor.checkpoint_dcp``); this module detects the format, picks the reader, finds the step
and fits the weights to the model. Nothing in a checkpoint runs code unless
``checkpoint.allow_pickle`` is set, and every failure is a ``CheckpointError`` naming the path,
with a ``reason`` token for the error metric: ``missing``, ``corrupt``, ``pickle``,
``mismatch`` or ``format``.
"""

from __future__ import annotations

import logging
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from monitor.checkpoint_dcp import read_dcp
from monitor.checkpoint_formats import (
    HF_FILES,
    Payload,
    fail,
    read_export,
    read_hf,
    read_safetensors,
    read_torch_save,
    read_torchscript,
)
from monitor.config import CheckpointConfig
from monitor.errors import CheckpointError

logger = logging.getLogger(__name__)

FOLDER_FORMATS = ("hf", "dcp")
SELF_DESCRIBING = ("torchscript", "export")
_LISTED = 5  # keys a mismatch message spells out, per kind
# BatchNorm fills in a missing counter itself (checkpoints older than PyTorch 0.4.1 lack it)
# and nn.Module.load_state_dict(strict=True) accepts that; so do we.
_OPTIONAL = "num_batches_tracked"
_Identity = tuple[int, int, tuple[int, ...], tuple[int, ...]]
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
    except (zipfile.BadZipFile, OSError, EOFError):
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


# --- weights into a model -------------------------------------------------------------------


@dataclass(frozen=True)
class _Alignment:
    """Checkpoint key -> model key, what is left over on each side, and how it was found."""

    mapping: dict[str, str]
    unexpected: list[str]
    how: str  # "" or e.g. " (after stripping 'module.')"


def _dotted_splits(key: str) -> list[tuple[str, str]]:
    """``a.b.c`` -> [("a.", "b.c"), ("a.b.", "c")]: every prefix a wrapper could have added."""
    return [(key[: i + 1], key[i + 1 :]) for i, char in enumerate(key) if char == "."]


def _align(keys: list[str], model_keys: set[str]) -> _Alignment:
    """Line checkpoint keys up with the model's by stripping or adding one dotted prefix.

    Wrappers prefix every key: DDP ``module.``, ``torch.compile`` ``_orig_mod.``, a
    LightningModule its attribute (``model.``); a wrapped model built by the factory wants
    one added instead. Every candidate prefix is counted by how many model keys it would
    match, and the best wins (no prefix on a tie). Keys outside a stripped prefix belong to
    sibling modules of the wrapper (a Lightning module's loss or metrics) and are ignored.
    """
    identity = [key for key in keys if key in model_keys]
    if len(identity) == len(model_keys) == len(keys):
        return _Alignment({key: key for key in keys}, [], "")
    strip: Counter[str] = Counter()
    for key in keys:
        for prefix, rest in _dotted_splits(key):
            if rest in model_keys:
                strip[prefix] += 1
    present = set(keys)
    add: Counter[str] = Counter()
    for model_key in model_keys:
        for prefix, rest in _dotted_splits(model_key):
            if rest in present:
                add[prefix] += 1
    best_strip = max(strip.items(), key=lambda item: (item[1], -len(item[0])), default=("", 0))
    best_add = max(add.items(), key=lambda item: (item[1], -len(item[0])), default=("", 0))
    if len(identity) >= max(best_strip[1], best_add[1]):
        mapping = {key: key for key in identity}
        return _Alignment(mapping, [key for key in keys if key not in mapping], "")
    if best_strip[1] >= best_add[1]:
        prefix = best_strip[0]
        inside = [key for key in keys if key.startswith(prefix)]
        mapping = {key: key[len(prefix) :] for key in inside if key[len(prefix) :] in model_keys}
        ignored = len(keys) - len(inside)
        if ignored:
            logger.info("ignoring %d checkpoint keys outside %r", ignored, prefix)
        unexpected = [key for key in inside if key not in mapping]
        return _Alignment(mapping, unexpected, f" (after stripping {prefix!r})")
    prefix = best_add[0]
    mapping = {key: prefix + key for key in keys if prefix + key in model_keys}
    unexpected = [key for key in keys if key not in mapping]
    return _Alignment(mapping, unexpected, f" (after adding {prefix!r})")


def _tied_away(
    missing: list[str], loaded: set[str], model_state: Mapping[str, torch.Tensor]
) -> list[str]:
    """Drop missing keys whose tensor is one the checkpoint fills under another name.

    Tied weights (an LM head sharing the embedding) are saved once by safetensors and
    ``transformers``; the other name is not really missing.
    """

    def identity(tensor: torch.Tensor) -> _Identity | None:
        if tensor.device.type == "meta" or tensor.numel() == 0:
            return None  # no storage to share
        storage = tensor.untyped_storage().data_ptr()
        return storage, int(tensor.storage_offset()), tuple(tensor.shape), tuple(tensor.stride())

    filled = {identity(model_state[key]) for key in loaded} - {None}
    return [key for key in missing if identity(model_state[key]) not in filled]


def _listing(keys: list[str], noun: str, plural: str) -> str:
    shown = ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
    return f"{len(keys)} {noun if len(keys) == 1 else plural}: {shown}"


def load_weights(model: nn.Module, loaded: LoadedCheckpoint, strict: bool = True) -> nn.Module:
    """Copy a checkpoint's weights into ``model`` in place and return it.

    Keys are lined up first (see ``_align``). With ``strict``, a model key the checkpoint does
    not fill or a checkpoint key the model lacks is an error; without it they are allowed, as
    long as something matched. A shape mismatch is always an error: copying would fail, and
    silently skipping the layer would measure a half-random model.
    """
    state = loaded.state_dict
    if state is None and loaded.module is not None:
        state = dict(loaded.module.state_dict())
    if state is None:
        raise fail(loaded.path, f"the {loaded.format} checkpoint holds no weights", "format")
    weights = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    model_state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    alignment = _align(list(weights), set(model_state))
    missing = sorted(
        key
        for key in set(model_state) - set(alignment.mapping.values())
        if not key.endswith(_OPTIONAL)
    )
    missing = _tied_away(missing, set(alignment.mapping.values()), model_state)
    shapes = [
        f"{target} (checkpoint {list(weights[key].shape)}, model {list(model_state[target].shape)})"
        for key, target in alignment.mapping.items()
        if weights[key].shape != model_state[target].shape
    ]
    problems = []
    if strict and missing:
        problems.append(_listing(missing, "missing key", "missing keys"))
    if strict and alignment.unexpected:
        problems.append(_listing(sorted(alignment.unexpected), "unexpected", "unexpected"))
    if shapes:
        problems.append(_listing(shapes, "shape mismatch", "shape mismatches"))
    if not alignment.mapping:
        sample = ", ".join(sorted(weights)[:3]) or "none"
        expected = ", ".join(sorted(model_state)[:3]) or "none"
        nothing = f"no checkpoint key matches the model (checkpoint: {sample}, ...; "
        problems.insert(0, nothing + f"model: {expected}, ...)")
    if problems:
        hint = "" if shapes or not strict else " (checkpoint.strict: false loads what matches)"
        raise fail(
            loaded.path,
            f"does not fit the model{alignment.how}: {'; '.join(problems)}{hint}",
            "mismatch",
        )
    renamed = {target: weights[key] for key, target in alignment.mapping.items()}
    try:
        with torch.no_grad():
            model.load_state_dict(renamed, strict=False)
    except RuntimeError as exc:  # a module's own _load_from_state_dict may refuse a value
        raise fail(loaded.path, f"the model refused the weights ({exc})", "mismatch") from exc
    return model


def load_model(
    path: str | Path,
    config: CheckpointConfig,
    build_model: Callable[[], nn.Module] | None,
) -> tuple[nn.Module, LoadedCheckpoint]:
    """Read a checkpoint and return a model holding it, with the ``LoadedCheckpoint``.

    TorchScript and ``torch.export`` files carry their module; weight formats need the
    operator's ``build_model`` (``model.factory``) to build the model the weights go into.
    """
    loaded = read_checkpoint(path, config)
    if loaded.module is not None:
        return loaded.module, loaded
    if build_model is None:
        raise CheckpointError(
            f"{loaded.path}: a {loaded.format} checkpoint holds weights only; set "
            "model.factory in the config to build the model they belong to",
            reason="format",
        )
    return load_weights(build_model(), loaded, strict=config.strict), loaded
