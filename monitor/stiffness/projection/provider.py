"""``ProjectedGradients``: any gradient provider, its chunks' rows projected (``projector``).

The modes see a provider like any other whose chunks hold (b, K) rows (K the projected
width, at most ``total_dim`` when folded): class sums become (sets·C, K), pair mode's panels
(b, K) per chunk, and every number (norms, cosines, signs,
the zero-norm rule) is computed from the projected vectors.
"""

from __future__ import annotations

import torch

from monitor.stiffness.gradients import GradientProvider, MappedRows, Rows
from monitor.stiffness.inputs import Projection
from monitor.stiffness.parameters import ParameterSelection
from monitor.stiffness.projection.projector import Projector


class ProjectedGradients(MappedRows):
    """Wraps ``inner``; its chunks' rows projected by ``projector``."""

    def __init__(
        self, inner: GradientProvider, selection: ParameterSelection, projection: Projection
    ) -> None:
        super().__init__(inner)
        self.projector = Projector(
            projection.dim, projection.seed, selection.shapes, inner.device, selection.dtype,
            projection.kind, projection.total_dim, projection.fold_always,
        )  # fmt: skip

    def map_rows(self, rows: Rows) -> torch.Tensor:
        return self.projector.rows(rows)


def projected(
    selection: ParameterSelection, projection: Projection | None, inner: GradientProvider
) -> GradientProvider:
    """``inner`` itself when ``projection`` is None (exact), else projected."""
    return inner if projection is None else ProjectedGradients(inner, selection, projection)
