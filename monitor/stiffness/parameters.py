"""Which weights stiffness is measured over: the parameter selection.

Stiffness values are only comparable across checkpoints when the parameter set stays fixed
(DESIGN §2, pitfalls), so the selection is explicit, made once per evaluation from glob
patterns, and reported (``Counts.parameters``). Everything not selected, frozen parameters
and buffers (BatchNorm running statistics) included, is handed to the gradient backends as
constants: they shape the forward pass but receive no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from monitor.errors import EngineError


@dataclass(frozen=True, eq=False)
class ParameterSelection:
    """The selected weights (differentiated) and everything else the forward pass needs.

    ``names`` fixes the order in which per-example gradients are flattened and concatenated
    into one row of length ``numel``; every backend must follow it so rows are comparable.
    """

    names: tuple[str, ...]
    params: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor]
    numel: int

    @property
    def dtype(self) -> torch.dtype:
        """The dtype gradients are computed in: float64 only when the weights are float64."""
        first = self.params[self.names[0]]
        return torch.float64 if first.dtype == torch.float64 else torch.float32

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each selected weight's (global, for a sharded one) shape, in ``names`` order:
        what a projection's widths and seeds depend on."""
        return {name: tuple(self.params[name].shape) for name in self.names}


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """True when ``name`` matches an include glob (any, if none are given) and no exclude."""
    included = not include or any(fnmatchcase(name, pattern) for pattern in include)
    return included and not any(fnmatchcase(name, pattern) for pattern in exclude)


def select_parameters(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ParameterSelection:
    """Split the model's tensors into selected trainable parameters and constants.

    Tensors are detached: the backends differentiate through ``torch.func`` (or their own
    hooks), never through the module's autograd graph or ``.grad`` fields.
    """
    params: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and matches(name, include, exclude):
            if not parameter.is_floating_point():
                raise EngineError(f"parameter {name!r} is {parameter.dtype}, not floating point")
            params[name] = parameter.detach()
        else:
            constants[name] = parameter.detach()
    for name, buffer in model.named_buffers():
        constants[name] = buffer.detach()
    if not params:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        raise EngineError(
            "no parameter selected for stiffness: include="
            f"{list(include)!r}, exclude={list(exclude)!r}, trainable parameters: "
            f"{trainable[:8]!r}{' ...' if len(trainable) > 8 else ''}"
        )
    names = tuple(params)
    return ParameterSelection(
        names=names,
        params=params,
        constants=constants,
        numel=sum(int(params[n].numel()) for n in names),
    )


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 (``fully_shard``) holds the model's weights as DTensor shards.

    Only the layer-hook backend can run such a model: vmap's ``functional_call`` and the
    loop differentiate the module's parameters, which are shards outside the forward's graph
    (the forward runs on gathered copies)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
