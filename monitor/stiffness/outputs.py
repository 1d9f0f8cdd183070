"""What every gradient backend asks of a model's output: (B, C) logits the targets fit.

The checks run once, up front, on a small batch, so a wrong model fails with a message that
names the problem rather than deep inside a backend (a vmap trace, an autograd error).
"""

from __future__ import annotations

from typing import Any

import torch

from monitor.errors import EngineError

LOSSES = ("cross_entropy",)


def extract_logits(output: Any) -> torch.Tensor:
    """The (B, C) logits from a model output: a tensor, ``.logits``, or element 0."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif hasattr(output, "logits"):
        logits = output.logits
    elif isinstance(output, tuple | list) and output:
        logits = output[0]
    else:
        raise EngineError(f"model output of type {type(output).__name__} holds no logits tensor")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise EngineError(f"model output must be (batch, classes) logits, got shape {shape}")
    return logits


def check_logits(output: Any, batch: int, targets: torch.Tensor) -> int:
    """Raise EngineError unless ``output`` holds (batch, C) logits every target indexes.

    Returns C, the number of outputs.
    """
    logits = extract_logits(output)
    if logits.shape[0] != batch:
        raise EngineError(
            f"model output has {logits.shape[0]} rows for a batch of {batch} examples"
        )
    outputs = int(logits.shape[1])
    top, bottom = int(targets.max()), int(targets.min())
    if bottom < 0:
        raise EngineError(f"probe target {bottom} is negative; targets are class indices")
    if top >= outputs:
        raise EngineError(f"probe target {top} but the model has {outputs} outputs")
    return outputs
