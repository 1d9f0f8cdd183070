"""``RawProbe``: every example of a probe source, converted to tensors and checked.

Whatever the source (``monitor.probe.sources``), ``RawProbe.from_arrays`` converts and checks
the arrays the same way: numeric inputs of shape (N, ...) with finite values, integer class
indices as targets (a probe with float or one-hot labels would load "successfully" and give
plausible-looking, meaningless curves), and a split of ``"train"``/``"val"`` strings or a bool
mask. Probes for sequence losses add ``token_targets`` ((N, T) integer token labels, -100
where there is no loss: Hugging Face's ``labels``) and optionally ``attention_mask`` ((N, T)
of 0/1), both at the inputs' T positions; a label on a position the mask hides is refused
(it would train on padding). Every problem is a ``ProbeError`` naming the source and saying
what was expected and what was found, so that sampling (``monitor.probe.sampling``) can
trust what it gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monitor.errors import ProbeError
from monitor.probe.tokens import token_fields

SPLITS = ("train", "val")
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
    token_targets: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def from_arrays(
        cls,
        inputs: Any,
        targets: Any,
        split: Any = None,
        *,
        source: str,
        token_targets: Any = None,
        attention_mask: Any = None,
    ) -> RawProbe:
        """Convert tensors, arrays or lists and check them; ``split`` is a sequence of
        ``"train"``/``"val"`` strings or a bool mask (True = train), or None;
        ``token_targets`` and ``attention_mask`` are (N, T) or None."""
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
        tokens, mask = token_fields(inputs_t, token_targets, attention_mask, source)
        return cls(inputs_t, targets_t, is_train, source, tokens, mask)


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
