"""``ProjectedGradients``: any gradient provider, its chunks' rows projected (``projector``).

The modes see a provider like any other whose chunks hold (b, K) rows: class sums become
(sets·C, K), pair mode's panels (b, K) per chunk, and every number (norms, cosines, signs,
the zero-norm rule) is computed from the projected vectors.
"""

from __future__ import annotations

import torch

from monitor.stiffness.gradients import GradientChunk, GradientProvider
from monitor.stiffness.inputs import Projection
from monitor.stiffness.parameters import ParameterSelection
from monitor.stiffness.projection.projector import Projector


class ProjectedGradients:
    """Wraps ``inner``; ``example_bytes`` passes through (the inner chunk is formed first)."""

    def __init__(
        self, inner: GradientProvider, selection: ParameterSelection, projection: Projection
    ) -> None:
        self.inner = inner
        shapes = selection.shapes
        self.projector = Projector(
            projection.dim, projection.seed, shapes, inner.device, selection.dtype,
            projection.kind, projection.total_dim, projection.fold_always,
        )  # fmt: skip
        self.example_bytes = int(getattr(inner, "example_bytes", 0) or 0)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def __call__(self, start: int, stop: int) -> GradientChunk:
        chunk = self.inner(start, stop)
        with torch.no_grad():
            rows = self.projector.rows(chunk.grads)
        return GradientChunk(start, stop, rows, chunk.losses, chunk.correct)


def projected(
    selection: ParameterSelection, projection: Projection | None, inner: GradientProvider
) -> GradientProvider:
    """``inner`` itself when ``projection`` is None (exact), else projected."""
    return inner if projection is None else ProjectedGradients(inner, selection, projection)
