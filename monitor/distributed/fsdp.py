"""The examples split with the weights sharded by FSDP2 (``fully_shard``): for a model too
large for one device.

FSDP is data parallel: each rank runs its own span of the probe, as ``ExampleParallel``
does, through whole weights that FSDP2 gathers one layer (one ``fully_shard`` unit: every
module that owns parameters) at a time and frees again after that layer's forward and
backward. Between passes a rank holds only its 1/R shard of every weight. The per-example
gradients are those of the whole, unsharded weights, formed by the layer rules from each
layer's inputs and output gradients (the hook backend, which never asks autograd for a
weight's gradient: FSDP's reduce-scatter has nothing to do), so the results are exact.

Every forward and backward is now a collective (the gathers), so every rank must run the
same number of them, while ranks' spans (and in pair mode their recomputed columns) differ.
``Lockstep`` keeps them in step: before each pass the ranks sum a flag saying whether they
still have work; a rank that is done runs a discarded pass on one example until all are.

The model is built on the meta device (no memory), sharded, then given memory for its
shards only; each rank reads the checkpoint and keeps its own shard of each tensor
(``monitor.checkpoints.loading``). A model with non-persistent buffers (computed in its
constructor, not in the checkpoint) is built for real once, whole, in host memory.

May import: ``stiffness``, ``monitor.errors``, the rest of ``monitor.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from monitor.distributed.data_parallel import ExampleParallel
from monitor.distributed.launch import ProcessGroup
from monitor.stiffness.gradients import ChunkStream, ExampleStats, GradientChunk, GradientProvider
from monitor.stiffness.inputs import EngineOptions
from monitor.stiffness.layout import ModeResult, ProbeLayout


def _build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """The model without memory for its weights, or built whole when it must be (a
    non-persistent buffer has no value but the one its constructor computed)."""
    with torch.device("meta"):
        model = factory()
    saved = set(model.state_dict())
    if all(name in saved for name, _ in model.named_buffers()):
        return model
    return factory()


def shard_model(
    factory: Callable[[], nn.Module], device: torch.device, world_size: int
) -> nn.Module:
    """``factory()``'s model with every parameter-owning module a ``fully_shard`` unit over
    the ``world_size`` ranks, holding memory for this rank's shards only (values unset until
    a checkpoint is loaded; a module without a checkpoint keeps whatever ``to_empty`` left)."""
    model = _build_on_meta(factory)
    mesh = init_device_mesh(device.type, (world_size,))
    for module in reversed(list(model.modules())):  # innermost first, as FSDP2 requires
        owns = any(p is not None for p in module._parameters.values())
        if owns and module is not model:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if any(p.device.type == "meta" for p in model.parameters()):
        model.to_empty(device=device)
    else:
        model.to(device)
    return model


class Lockstep:
    """A provider whose calls are collectives: every rank makes the same number (see the
    module docstring). ``settle`` runs discarded passes until every rank has settled."""

    def __init__(self, provider: GradientProvider, group: ProcessGroup) -> None:
        self.provider = provider
        self.group = group
        self.spare_passes = 0  # discarded passes this rank ran while others worked

    @property
    def device(self) -> torch.device:
        return self.provider.device

    def _anyone_working(self, working: bool) -> bool:
        flag = torch.tensor([int(working)], dtype=torch.int64)
        return int(self.group.sum_(flag, "the ranks' next pass").item()) > 0

    def __call__(self, start: int, stop: int) -> GradientChunk:
        self._anyone_working(True)
        return self.provider(start, stop)

    def settle(self) -> None:
        """Wait for the others' passes, taking part in each, until every rank is here."""
        while self._anyone_working(False):
            self.provider(0, 1)
            self.spare_passes += 1


class ShardedExamples(ExampleParallel):
    """``ExampleParallel`` on an FSDP2-sharded model: the same spans and sums, with every
    pass in ``Lockstep`` and the ranks settled before each exchange of sums."""

    def __call__(
        self,
        options: EngineOptions,
        stream: ChunkStream,
        layout: ProbeLayout,
        stats: ExampleStats,
        inputs: torch.Tensor,
    ) -> ModeResult:
        self.lockstep = Lockstep(stream.provider, self.group)
        stream.provider = self.lockstep
        return super().__call__(options, stream, layout, stats, inputs)

    def settle(self) -> None:
        self.lockstep.settle()
