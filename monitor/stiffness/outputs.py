"""What every gradient backend asks of a model: how to call it, where its output keeps the
logits, and logits the targets fit.

``Objective`` is the per-example loss the engine differentiates: ``cross_entropy`` on
(B, C) logits with one class per example, or a sequence loss on (B, T, V) logits with
Hugging Face ``labels`` per token (``causal_lm`` shifts them inside the loss,
``token_cross_entropy`` does not; ``loss.sequence_cross_entropy``). It also carries the
probe's attention mask: a model is called ``model(x)``, or ``model(x, attention_mask=m)``
when the probe has one, the way Hugging Face models take padded batches. And it carries the
``OutputSpec`` (``monitor.stiffness.output_spec``): where the model's output keeps its logits
(a tensor, a dict's or ``ModelOutput``'s ``logits``, a tuple's first element by default, or
what ``model.output``/``model.output_fn`` name), read the same way for class and token
logits. One object, so every backend reads the logits and applies the loss alike.

The checks run once, up front, on a small batch, so a wrong model fails with a message that
names the problem rather than deep inside a backend (a vmap trace, an autograd error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness.inputs import LOSSES
from monitor.stiffness.loss import IGNORE_INDEX, cross_entropy, sequence_cross_entropy
from monitor.stiffness.output_spec import DEFAULT_OUTPUT, OutputSpec

__all__ = [
    "DEFAULT_OUTPUT",
    "LOSSES",
    "SEQUENCE_LOSSES",
    "Objective",
    "OutputSpec",
    "check_logits",
    "extract_logits",
]

SEQUENCE_LOSSES = ("causal_lm", "token_cross_entropy")


def extract_logits(output: Any, spec: OutputSpec = DEFAULT_OUTPUT, dims: int = 2) -> torch.Tensor:
    """The logits from a model output, found as ``spec`` says; ``dims`` is 2 for
    (batch, classes), 3 for (batch, positions, vocabulary)."""
    return spec.logits(output, dims)


def check_logits(
    output: Any, batch: int, targets: torch.Tensor, spec: OutputSpec = DEFAULT_OUTPUT
) -> int:
    """Raise EngineError unless ``output`` holds (batch, C) logits every target indexes.

    Returns C, the number of outputs.
    """
    logits = extract_logits(output, spec)
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


def check_token_logits(
    output: Any, batch: int, labels: torch.Tensor, spec: OutputSpec = DEFAULT_OUTPUT
) -> int:
    """Raise EngineError unless ``output`` holds (batch, T, V) logits at the labels' T
    positions and every label but ``IGNORE_INDEX`` indexes V. Returns V."""
    logits = extract_logits(output, spec, dims=3)
    want = (batch, int(labels.shape[1]))
    if tuple(logits.shape[:2]) != want:
        raise EngineError(
            f"model output has logits of shape {tuple(logits.shape)} for token_targets of "
            f"{want[1]} positions and a batch of {batch}; expected ({batch}, {want[1]}, V)"
        )
    vocabulary = int(logits.shape[2])
    kept = labels[labels != IGNORE_INDEX]
    if kept.numel() and int(kept.max()) >= vocabulary:
        raise EngineError(f"token target {int(kept.max())} but the model has {vocabulary} outputs")
    if kept.numel() and int(kept.min()) < 0:
        raise EngineError(f"token target {int(kept.min())} is negative and not {IGNORE_INDEX}")
    return vocabulary


@dataclass(frozen=True, eq=False)
class Objective:
    """The per-example loss (``loss``), the probe's ``attention_mask`` (N, T) or None, and
    where the model's output keeps its logits (``output``)."""

    loss: str = "cross_entropy"
    attention_mask: torch.Tensor | None = None
    output: OutputSpec = DEFAULT_OUTPUT

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def sequence(self) -> bool:
        return self.loss in SEQUENCE_LOSSES

    def mask(self, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
        """The attention mask of examples ``start`` to ``stop`` on ``device``, or None."""
        if self.attention_mask is None:
            return None
        return self.attention_mask[start:stop].to(device)

    @staticmethod
    def kwargs(mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Keyword arguments of the model call: the attention mask when there is one."""
        return {} if mask is None else {"attention_mask": mask}

    def call(self, model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> Any:
        return model(x, **self.kwargs(mask))

    def logits(self, output: Any) -> torch.Tensor:
        """(B, C) or, for a sequence loss, (B, T, V) logits, where ``self.output`` says."""
        return extract_logits(output, self.output, dims=3 if self.sequence else 2)

    def losses(
        self, output: Any, targets: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses (b,) and correctness (b,): for classification a bool, for
        sequences the fraction of labelled tokens whose argmax is the label."""
        logits = self.logits(output).to(dtype)
        if self.sequence:
            return sequence_cross_entropy(logits, targets, shift=self.loss == "causal_lm")
        return cross_entropy(logits, targets), logits.argmax(dim=1) == targets

    def check(self, output: Any, batch: int, targets: torch.Tensor) -> int:
        """``check_logits`` or ``check_token_logits``: the outputs, or EngineError."""
        if self.sequence:
            return check_token_logits(output, batch, targets, self.output)
        return check_logits(output, batch, targets, self.output)
