"""Fitting a checkpoint's weights into the operator's model.

Weight formats hold only tensors under the names the training code gave them, and wrappers
change those names: DDP adds ``module.``, ``torch.compile`` ``_orig_mod.``, Lightning the
module's attribute (``model.``). ``load_weights`` lines the keys up with the model's, checks
that every weight fits (a mismatch is a ``CheckpointError`` with reason ``mismatch``) and
copies them in; ``load_model`` reads a checkpoint and returns a model holding it, built by
``model.factory`` unless the checkpoint carries its own module.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from monitor.checkpoints.payload import fail
from monitor.checkpoints.reader import LoadedCheckpoint, read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError

logger = logging.getLogger(__name__)

_LISTED = 5  # keys a mismatch message spells out, per kind
# BatchNorm fills in a missing counter itself (checkpoints older than PyTorch 0.4.1 lack it)
# and nn.Module.load_state_dict(strict=True) accepts that; so do we.
_OPTIONAL = "num_batches_tracked"
_Identity = tuple[int, int, tuple[int, ...], tuple[int, ...]]


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
        if _is_shard(tensor):  # FSDP2: the shard's storage (tied weights share it too)
            tensor = tensor.to_local()  # type: ignore[attr-defined]
        if tensor.device.type == "meta" or tensor.numel() == 0:
            return None  # no storage to share
        storage = tensor.untyped_storage().data_ptr()
        return storage, int(tensor.storage_offset()), tuple(tensor.shape), tuple(tensor.stride())

    filled = {identity(model_state[key]) for key in loaded} - {None}
    return [key for key in missing if identity(model_state[key]) not in filled]


def _listing(keys: list[str], noun: str, plural: str) -> str:
    shown = ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
    return f"{len(keys)} {noun if len(keys) == 1 else plural}: {shown}"


def _is_shard(tensor: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _copy_shard(target: torch.Tensor, whole: torch.Tensor) -> None:
    """This rank's shard of ``whole`` into the model's DTensor ``target`` (FSDP2: split along
    one dimension as ``torch.chunk`` splits it). Every rank read the whole checkpoint, so
    each cuts its own piece, with no communication, and only that piece reaches the device."""
    from torch.distributed.tensor import DTensor, Shard

    assert isinstance(target, DTensor)
    local = whole
    mesh = target.device_mesh
    for axis, placement in enumerate(target.placements):
        if isinstance(placement, Shard):
            pieces = torch.chunk(local, mesh.size(axis), dim=placement.dim)
            rank = mesh.get_local_rank(axis)
            local = pieces[rank] if rank < len(pieces) else local.narrow(placement.dim, 0, 0)
        elif not placement.is_replicate():
            raise RuntimeError(f"cannot load a weight placed as {placement}")
    shard = target.to_local()
    shard.copy_(local.reshape(shard.shape))


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
            for target in [t for t in renamed if _is_shard(model_state[t])]:
                _copy_shard(model_state[target], renamed.pop(target))
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
