"""``DistributedEngine``: ``compute_stiffness`` with one of the distributed passes.

The evaluator calls it as it calls the engine (model, probe, options, device). Split by
examples (the default), it hands the engine the data-parallel pass; split by parameters, it
first fixes each rank's share of the selected parameter tensors and runs the engine on that
share with the sharded pass. Either way every rank returns the same, full result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from monitor.distributed.data_parallel import ExampleParallel
from monitor.distributed.fsdp import ShardedExamples, shard_model
from monitor.distributed.launch import ProcessGroup
from monitor.distributed.sharded import ParameterSharded
from monitor.distributed.shares import example_spans, literal_pattern, parameter_shares
from monitor.errors import EngineError
from monitor.stiffness import compute_stiffness
from monitor.stiffness.inputs import EngineOptions, ProbeSet, Projection
from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec
from monitor.stiffness.parameters import ParameterSelection, is_sharded, select_parameters
from monitor.stiffness.projection.projector import unfolded_width
from monitor.stiffness.result import StiffnessResult

Split = Literal["examples", "parameters", "fsdp"]
SPLITS: tuple[Split, ...] = ("examples", "parameters", "fsdp")


class DistributedEngine:
    """The engine on every rank of ``group``, splitting the examples or the parameters."""

    def __init__(self, group: ProcessGroup, split: Split = "examples") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.group = group
        self.split = split

    def build_model(self, factory: Callable[[], nn.Module], device: torch.device) -> nn.Module:
        """The evaluator's model: built whole on ``device``, or sharded across the ranks."""
        if self.split == "fsdp":
            return shard_model(factory, device, self.group.world_size)
        return factory().to(device)

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
        if self.split == "fsdp":
            if not is_sharded(model):
                raise EngineError(
                    "--split fsdp shards a model built by model.factory; this checkpoint "
                    "carries its own module (TorchScript or torch.export), which is not sharded"
                )
            example_spans(probe.size, group.world_size)
            return compute_stiffness(
                model, probe, options, device, output=output, runner=ShardedExamples(group)
            )
        if self.split == "examples":
            example_spans(probe.size, group.world_size)  # every rank gets an example, or error
            return compute_stiffness(
                model, probe, options, device, output=output, runner=ExampleParallel(group)
            )
        selection = select_parameters(model, options.include, options.exclude)
        sizes = [int(selection.params[name].numel()) for name in selection.names]
        share = parameter_shares(selection.names, sizes, group.world_size)[group.rank]
        mine = replace(
            options,
            include=tuple(literal_pattern(n) for n in share),
            exclude=(),
            projection=_share_projection(options.projection, selection),
        )
        result = compute_stiffness(
            model, probe, mine, device, output=output, runner=ParameterSharded(group)
        )
        # The engine counted this rank's share; the numbers are over the whole selection.
        return replace(result, counts=replace(result.counts, parameters=selection.numel))


def _share_projection(
    projection: Projection | None, selection: ParameterSelection
) -> Projection | None:
    """A rank's projection of its share: folded exactly when the whole selection's rows
    would be (then the ranks sum their folded rows, ``ParameterSharded``), never otherwise."""
    if projection is None or projection.total_dim is None:
        return projection
    if unfolded_width(projection.dim, projection.kind, selection.shapes) <= projection.total_dim:
        return replace(projection, total_dim=None)
    return replace(projection, fold_always=True)
