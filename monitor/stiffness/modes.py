"""One pass of a mode over the probe: class mode or pair mode, and the gradient statistics.

Apart from ``engine`` so that the engine stays the wiring (the provider, chunking and
out-of-memory retries, the result). ``ModeRunner`` is the seam a distributed run replaces
(``monitor.distributed``); ``run_mode`` is the one-process pass, and the only one that also
measures the training split's gradient statistics (``monitor.stiffness.statistics``): a
distributed runner's partial sums do not include them, so its results have none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from monitor.stiffness.class_mode import class_mode
from monitor.stiffness.gradients import ChunkStream, ExampleStats
from monitor.stiffness.inputs import EngineOptions
from monitor.stiffness.layout import ModeResult, ProbeLayout
from monitor.stiffness.pair_mode import pair_mode
from monitor.stiffness.statistics import StatisticsTracker

#: One pass of a mode over the probe: ``run_mode`` here, or a distributed one
#: (``monitor.distributed``) that forms partial sums per process and adds them up. It must
#: leave every example's norm, loss and correctness in ``stats``.
ModeRunner = Callable[
    [EngineOptions, ChunkStream, ProbeLayout, ExampleStats, torch.Tensor], ModeResult
]


def run_mode(
    options: EngineOptions,
    stream: ChunkStream,
    layout: ProbeLayout,
    stats: ExampleStats,
    inputs: torch.Tensor,
) -> ModeResult:
    """One pass of the chosen mode over the probe, from fresh ``stats``.

    All of it is retried with a halved chunk after a CUDA out-of-memory error anywhere
    inside, not only in the provider: the hook backend's rows are factored, so most memory
    is taken later, by the modes (materialised layers, class sums, Gram blocks), and a mode
    stopped half-way has already added part of a chunk to its sums. With
    ``options.statistics`` and a training split, the pass also feeds a fresh
    ``StatisticsTracker`` and the result carries its statistics."""
    tracker = (
        StatisticsTracker(layout, per_parameter=options.projection is None)
        if options.statistics and layout.has_splits
        else None
    )
    if options.mode == "class":
        part = class_mode(stream, layout, stats, options.uncertainty, tracker)
    else:
        part = pair_mode(
            stream, layout, stats, inputs, options.distance_bins, options.memory_limit, tracker
        )
    if tracker is None:
        return part
    return dataclasses.replace(part, statistics=tracker.result(stats.usable))
