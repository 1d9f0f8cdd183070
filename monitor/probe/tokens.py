"""The per-token fields of a probe for sequence losses: ``token_targets``, ``attention_mask``.

``token_targets`` are Hugging Face ``labels``: an integer label per input position, -100
where there is no loss (padding, prompt tokens), shifted inside the ``causal_lm`` loss, not
here. ``attention_mask`` marks real tokens (1) and padding (0) and is passed to the model.
Both are (N, T) at the inputs' positions: labels at other positions would silently pair
tokens with the wrong logits. A labelled position that the mask hides is refused: the loss
would then be measured on padding (the usual cause: labels copied from ``input_ids``
without setting the padding to -100, which ``DataCollatorForLanguageModeling`` does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from monitor.errors import ProbeError

IGNORE_INDEX = -100


def _tensor(value: Any, key: str, source: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biu":
            raise ProbeError(
                f"{source}: expected {key!r} as integers, got an array of dtype {value.dtype}"
            )
        value = torch.from_numpy(np.require(value, requirements=["C", "W"]))
    elif isinstance(value, list | tuple):
        try:
            value = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ProbeError(
                f"{source}: expected {key!r} as an (N, T) tensor or nested list of integers ({exc})"
            ) from exc
    if not isinstance(value, torch.Tensor):
        raise ProbeError(
            f"{source}: expected {key!r} as an (N, T) tensor, got {type(value).__name__}"
        )
    if value.is_floating_point() or value.is_complex():
        hint = " (save it with .long())" if bool(torch.all(value == value.round())) else ""
        dtype = str(value.dtype).removeprefix("torch.")
        raise ProbeError(f"{source}: expected {key!r} as integers, got {dtype}{hint}")
    return value.detach().cpu()


def _positions(value: torch.Tensor, key: str, inputs: torch.Tensor, source: str) -> None:
    """(N, T) with the inputs' N and T."""
    n = int(inputs.shape[0])
    t = int(inputs.shape[1]) if inputs.dim() >= 2 else None
    if value.dim() != 2 or value.shape[0] != n or (t is not None and value.shape[1] != t):
        want = f"({n}, {t})" if t is not None else f"({n}, T) with (N, T, ...) inputs"
        raise ProbeError(
            f"{source}: expected {key!r} of shape {want}, one entry per input position, "
            f"got {tuple(value.shape)}"
        )


def token_fields(
    inputs: torch.Tensor, token_targets: Any, attention_mask: Any, source: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``token_targets`` as (N, T) int64 and ``attention_mask`` as (N, T) int64, or None."""
    if token_targets is None and attention_mask is None:
        return None, None
    if token_targets is None:
        raise ProbeError(
            f"{source}: found 'attention_mask' but no 'token_targets'; an attention mask "
            "belongs to a sequence probe, which needs (N, T) token labels"
        )
    if inputs.dim() < 2:
        raise ProbeError(
            f"{source}: expected (N, T) token ids as 'inputs' with 'token_targets', "
            f"got shape {tuple(inputs.shape)}"
        )
    labels = _tensor(token_targets, "token_targets", source)
    _positions(labels, "token_targets", inputs, source)
    labels = labels.to(torch.int64)
    bad = (labels < 0) & (labels != IGNORE_INDEX)
    if bool(bad.any()):
        where = torch.nonzero(bad)[0].tolist()
        raise ProbeError(
            f"{source}: expected 'token_targets' >= 0, or {IGNORE_INDEX} where there is no "
            f"loss, got {int(labels[where[0], where[1]])} at example {where[0]}, "
            f"position {where[1]}"
        )
    if attention_mask is None:
        return labels, None
    mask = _tensor(attention_mask, "attention_mask", source)
    _positions(mask, "attention_mask", inputs, source)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ProbeError(f"{source}: expected 'attention_mask' of 0 (padding) and 1 (tokens)")
    mask = mask.to(torch.int64)
    hidden = (mask == 0) & (labels != IGNORE_INDEX)
    if bool(hidden.any()):
        where = torch.nonzero(hidden)[0].tolist()
        raise ProbeError(
            f"{source}: 'token_targets' labels position {where[1]} of example {where[0]}, "
            f"which 'attention_mask' marks as padding; set the labels of padding to "
            f"{IGNORE_INDEX}"
        )
    return labels, mask
