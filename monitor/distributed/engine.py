"""``DistributedEngine``: ``compute_stiffness`` with one of the distributed passes.

The evaluator calls it as it calls the engine (model, probe, options, device). Split by
examples (the default), it hands the engine the data-parallel pass; split by parameters, it
first fixes each rank's share of the selected parameter tensors and runs the engine on that
share with the sharded pass. Either way every rank returns the same, full result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from monitor.distributed.data_parallel import ExampleParallel
from monitor.distributed.launch import ProcessGroup
from monitor.distributed.sharded import ParameterSharded
from monitor.distributed.shares import example_spans, literal_pattern, parameter_shares
from monitor.stiffness import compute_stiffness
from monitor.stiffness.inputs import EngineOptions, ProbeSet
from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec
from monitor.stiffness.parameters import select_parameters
from monitor.stiffness.result import StiffnessResult

Split = Literal["examples", "parameters"]
SPLITS: tuple[Split, ...] = ("examples", "parameters")


class DistributedEngine:
    """The engine on every rank of ``group``, splitting the examples or the parameters."""

    def __init__(self, group: ProcessGroup, split: Split = "examples") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.group = group
        self.split = split

    def __call__(
        self,
        model: nn.Module,
        probe: ProbeSet,
        options: EngineOptions,
        device: torch.device,
        *,
        output: OutputSpec = DEFAULT_OUTPUT,
    ) -> StiffnessResult:
        group = self.group
        if self.split == "examples":
            example_spans(probe.size, group.world_size)  # every rank gets an example, or error
            return compute_stiffness(
                model, probe, options, device, output=output, runner=ExampleParallel(group)
            )
        selection = select_parameters(model, options.include, options.exclude)
        sizes = [int(selection.params[name].numel()) for name in selection.names]
        share = parameter_shares(selection.names, sizes, group.world_size)[group.rank]
        mine = replace(options, include=tuple(literal_pattern(n) for n in share), exclude=())
        result = compute_stiffness(
            model, probe, mine, device, output=output, runner=ParameterSharded(group)
        )
        # The engine counted this rank's share; the numbers are over the whole selection.
        return replace(result, counts=replace(result.counts, parameters=selection.numel))
