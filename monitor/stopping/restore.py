"""Restore the best checkpoint's weights into a live model: the callbacks'
``restore_best_weights``, for the files Lightning and Hugging Face write.

It runs inside the training process, so torch is imported only when weights are restored, and
files load weights-only: a checkpoint that needs arbitrary unpickling is refused here as it is
by the daemon.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("monitor.stopping.restore")


def _state_dict(path: Path) -> dict[str, Any]:
    """The weights in a Lightning ``.ckpt``, a ``torch.save`` file, a ``.safetensors`` file or a
    Hugging Face ``checkpoint-N`` folder (single or sharded safetensors, or ``.bin``)."""
    import torch

    if path.is_dir():
        single = path / "model.safetensors"
        if single.is_file():
            return _state_dict(single)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            import json

            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            merged: dict[str, Any] = {}
            for name in files:
                merged.update(_state_dict(path / name))
            return merged
        return _state_dict(path / "pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # Lightning
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return loaded


def load_best_weights(model: Any, path: str | os.PathLike[str]) -> int:
    """Load the weights at ``path`` into ``model`` in place; returns how many tensors loaded.

    Keys the file lacks are allowed only where the model ties them to another parameter (a
    Hugging Face LM head tied to its embedding is saved once). Raises ``ValueError`` when the
    file holds weights the model does not have, or none of its own.
    """
    state = _state_dict(Path(path))
    current = model.state_dict()
    own = {name for name, _ in model.named_parameters(remove_duplicate=True)}
    own |= {name for name, _ in model.named_buffers()}
    unexpected = [key for key in state if key not in current]
    missing = [key for key in own if key in current and key not in state]  # not tied aliases
    misshapen = [key for key, value in state.items()
                 if key in current and tuple(value.shape) != tuple(current[key].shape)]  # fmt: skip
    if unexpected or missing or misshapen or not state:  # checked first: nothing half-loaded
        shown = (misshapen or unexpected or missing)[:5]
        raise ValueError(
            f"{path}: does not fit the model ({len(unexpected)} unexpected, {len(missing)} "
            f"missing, {len(misshapen)} misshapen key(s), e.g. {shown})"
        )
    model.load_state_dict(state, strict=False)
    log.warning("restored the best weights from %s (%d tensors)", path, len(state))
    return len(state)
