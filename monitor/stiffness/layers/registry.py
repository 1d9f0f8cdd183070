"""The table of layer rules: module type -> how its parameters' per-example gradients look.

Opacus-style (``grad_sample/``): each rule lives in its own file and registers itself with
``@register(nn.Linear, ...)``. The table is looked up by exact type, so a subclass that
overrides ``forward`` (and may use its weight differently) is never silently treated as its
parent; it falls back to ``torch.func``. A rule may also decline a configuration it cannot
handle exactly (``when``), e.g. an Embedding with ``max_norm`` (it rewrites its weight).

Layers of libraries the engine must not import (``transformers``' ``Conv1D`` and RMSNorm
classes) register by qualified class name instead (``register_named``), again matched
exactly; the hook backend's setup check compares every rule with autograd, so a renamed or
rewritten class is caught there, not trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from monitor.stiffness.layers.uses import Use

#: (module, its positional forward inputs, gradient of the summed loss at its output,
#: compute dtype) -> {parameter name local to the module: its per-example gradients}
RuleFn = Callable[[Any, tuple[Any, ...], torch.Tensor, torch.dtype], dict[str, Use]]


@dataclass(frozen=True)
class Rule:
    compute: RuleFn
    when: Callable[[Any], bool]


RULES: dict[type[nn.Module], Rule] = {}
NAMED: dict[str, Rule] = {}  # "module.QualName" of a class the engine does not import


def _always(module: Any) -> bool:
    return True


def register(
    *types: type[nn.Module], when: Callable[[Any], bool] = _always
) -> Callable[[RuleFn], RuleFn]:
    """Decorator: ``compute`` is the rule for modules of exactly these types."""

    def add(compute: RuleFn) -> RuleFn:
        for kind in types:
            RULES[kind] = Rule(compute, when)
        return compute

    return add


def register_named(*names: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator: ``compute`` is the rule for classes of exactly these qualified names."""

    def add(compute: RuleFn) -> RuleFn:
        for name in names:
            NAMED[name] = Rule(compute, _always)
        return compute

    return add


def layer_type(module: nn.Module) -> type[nn.Module]:
    """``module``'s own class. FSDP2's ``fully_shard`` swaps a sharded module's class for a
    new ``FSDP<Cls>(FSDPModule, Cls)`` that adds no ``forward`` of its own (it gathers and
    frees the weights in hooks): the layer is still a ``Cls`` and its rule still holds."""
    kind = type(module)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if issubclass(kind, FSDPModule) and len(kind.__bases__) == 2:
            return cast(type[nn.Module], kind.__bases__[1])
    return kind


def rule_for(module: nn.Module) -> Rule | None:
    """The rule for ``module``, or None (its parameters fall back to ``torch.func``)."""
    kind = layer_type(module)
    rule = RULES.get(kind) or NAMED.get(f"{kind.__module__}.{kind.__qualname__}")
    return rule if rule is not None and rule.when(module) else None


def flat_positions(values: torch.Tensor, features: int, dtype: torch.dtype) -> torch.Tensor:
    """(b, ..., features) -> (b, T, features) in ``dtype``: every leading dim is a position."""
    return values.to(dtype).reshape(values.shape[0], -1, features)
