"""Stiffness of a live model, in-process: the engine for notebooks and scripts.

The daemon reads checkpoints from disk; a notebook already holds the model. ``evaluate`` takes
it and a labelled probe as tensors and returns the engine's result, with the options of the
config's ``stiffness`` section checked by the same schema (a misspelt option is a
``ConfigError`` naming the key, with a "did you mean"), so numbers from a notebook and from
the daemon agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from monitor.config.evaluating import StiffnessConfig
from monitor.config.messages import describe_validation_error
from monitor.errors import ConfigError
from monitor.evaluation.evaluator import resolve_device
from monitor.stiffness import compute_stiffness
from monitor.stiffness.engine import class_ordered
from monitor.stiffness.inputs import ProbeSet
from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec
from monitor.stiffness.result import StiffnessResult

ProbeLike = ProbeSet | Sequence[torch.Tensor]


def as_probe(probe: ProbeLike) -> ProbeSet:
    """A ``ProbeSet`` as it is, or ``(inputs, targets)`` / ``(inputs, targets, is_train)``."""
    if isinstance(probe, ProbeSet):
        return probe
    if len(probe) not in (2, 3):
        raise ValueError(
            f"expected a ProbeSet or (inputs, targets[, is_train]) tensors, got {len(probe)} items"
        )
    inputs, targets = probe[0], torch.as_tensor(probe[1]).long()
    is_train = None if len(probe) == 2 else torch.as_tensor(probe[2]).bool()
    return ProbeSet(inputs=inputs, targets=targets, is_train=is_train, source="in-process")


def evaluate(
    model: torch.nn.Module,
    probe: ProbeLike,
    *,
    output: str | int | Callable[[Any], torch.Tensor] | None = None,
    **stiffness: Any,
) -> StiffnessResult:
    """Gradient stiffness of ``model`` on ``probe``, as the daemon measures a checkpoint.

    ``stiffness`` takes the config's ``stiffness`` keys (``mode="pair"``, ``device="cuda"``,
    ``batch_size``, ``include``...); ``output`` says where the logits are in the model's
    output, as ``model.output`` or ``model.output_fn`` do. The model is moved to the device
    and left there, in its own training mode. Per-example values (``gradient_norms``) are in
    the probe's order.
    """
    try:
        options = StiffnessConfig.model_validate(stiffness)
    except ValidationError as exc:
        lines = describe_validation_error(exc, Path("evaluate(stiffness options)"), None,
                                          model=StiffnessConfig)  # fmt: skip
        raise ConfigError("\n".join(lines)) from None
    engine_options = options.engine_options()
    device = resolve_device(options.device)
    examples = as_probe(probe)
    order = None
    if engine_options.mode == "class":
        examples, order = class_ordered(examples)
    if callable(output):
        spec = OutputSpec(function=output)
    else:
        spec = DEFAULT_OUTPUT if output is None else OutputSpec(field=output)
    result = compute_stiffness(model, examples, engine_options, device, output=spec)
    if order is not None:
        norms: list[float | None] = [None] * len(result.gradient_norms)
        for position, example in enumerate(order.tolist()):
            norms[example] = result.gradient_norms[position]
        result = replace(result, gradient_norms=tuple(norms))
    return result
