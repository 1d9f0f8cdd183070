"""The selected parameters split across ranks: every rank runs the whole probe through the
whole model, but forms per-example gradients only for its own share of the weights.

Everything stiffness needs is a sum over parameters: |g_i|² = Σ_p |g_i,p|², the Gram
g_i·g_j = Σ_p g_i,p·g_j,p, and for unit gradients u_i = g_i/|g_i| the class-sum products
S_a·S_b = Σ_p S_a,p·S_b,p. So each rank's partial sums are added with ``all_reduce`` and the
result is exact. Class mode needs every example's full norm before it can normalise, so it
streams the probe twice: once for the partial squared norms (summed), once for the class
sums of its parameters with the full norms (``KnownNorms``).

What this saves: per rank, the class sums ((sets·C) × P/R float64, the largest term for
many classes), the materialised per-example gradient rows of its layers and the pair-mode
gradient cache fall with R. What it does not: every rank holds the whole model and runs the
whole forward and backward pass (activations and output gradients), and in pair mode the
(N, N) Gram. It is slower than one process (the forward and backward are not divided, and
class mode runs them twice); it is for class sums or gradient rows too large for one device.

Projection mode with a fold (``stiffness.projection.total_dim``) is the exception: a folded
row mixes every parameter's coordinates, so products of the ranks' partial folded rows miss
the terms between ranks. There each chunk's folded rows (b × total_dim) are summed over the
ranks instead (``SummedRows``), which gives every rank the one-process row, and every rank
runs the ordinary mode on them; what is divided is the projection of the per-example
gradients, and the class sums are already bounded by the fold.
"""

from __future__ import annotations

import torch

from monitor.distributed.launch import ProcessGroup, no_retry
from monitor.stiffness.class_mode import (
    class_mode_result,
    class_sums,
    classmate_dots,
    within_errors,
)
from monitor.stiffness.gradients import (
    ChunkStream,
    ExampleStats,
    GradientChunk,
    GradientProvider,
    MappedRows,
    Rows,
    dot64,
)
from monitor.stiffness.inputs import EngineOptions
from monitor.stiffness.layout import ModeResult, ProbeLayout
from monitor.stiffness.modes import run_mode
from monitor.stiffness.pair_mode import DEFAULT_CACHE_BYTES, gram_matrix, pair_mode_result


class KnownNorms(ExampleStats):
    """``ExampleStats`` whose norms are already known (summed over the ranks): recording a
    chunk changes nothing and returns the full norms, so class mode normalises by them."""

    def __init__(self, stats: ExampleStats) -> None:
        super().__init__(0, stats.min_grad_norm)
        self.norms, self.losses, self.correct = stats.norms, stats.losses, stats.correct

    def record(self, chunk: GradientChunk) -> tuple[torch.Tensor, torch.Tensor]:
        norms = self.norms[chunk.start : chunk.stop]
        return norms, torch.isfinite(norms) & (norms > self.min_grad_norm)


def full_norms(group: ProcessGroup, stats: ExampleStats) -> None:
    """Every rank's partial norms (its parameters only) into the full ones, in place. A
    non-finite part makes the whole norm non-finite, as it would in one process."""
    squares = group.sum_(stats.norms.square(), "partial squared norms")
    stats.norms = squares.sqrt()


class SummedRows(MappedRows):
    """A provider whose chunks' rows are summed over the ranks: each rank's folded projection
    of its share of the parameters, added up into the whole folded row (``Projector``)."""

    def __init__(self, inner: GradientProvider, group: ProcessGroup) -> None:
        super().__init__(inner)
        self.group = group

    def map_rows(self, rows: Rows) -> torch.Tensor:
        assert isinstance(rows, torch.Tensor), "projected rows are a matrix"
        return self.group.sum_(rows, "folded projected rows")


class ParameterSharded:
    """Runs class or pair mode over this rank's parameters on every example, then sums."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group

    def __call__(
        self,
        options: EngineOptions,
        stream: ChunkStream,
        layout: ProbeLayout,
        stats: ExampleStats,
        inputs: torch.Tensor,
    ) -> ModeResult:
        if options.projection is not None and options.projection.fold_always:
            summed = ChunkStream(
                SummedRows(stream.provider, self.group),
                stream.batch_size,
                stream.initial_batch_size,
            )
            with no_retry():
                return run_mode(options, summed, layout, stats, inputs)
        if options.mode == "class":
            return self._class(options, stream, layout, stats)
        limit = options.memory_limit
        cache = limit // 2 if limit is not None else DEFAULT_CACHE_BYTES
        gram = gram_matrix(stream, layout.size, stats, cache)  # this rank's parameters
        with no_retry():
            self.group.sum_(gram, "partial Gram matrices")
            full_norms(self.group, stats)
        return pair_mode_result(gram, layout, stats, inputs, options.distance_bins)

    def _class(
        self, options: EngineOptions, stream: ChunkStream, layout: ProbeLayout, stats: ExampleStats
    ) -> ModeResult:
        for chunk in stream.chunks(0, layout.size):  # partial norms, losses, correctness
            stats.record(chunk)
            del chunk
        group = self.group
        with no_retry():
            full_norms(group, stats)
            known = KnownNorms(stats)
            found = class_sums(stream, layout, known)
            assert found is not None, "the engine rejects an empty probe"
            products = group.sum_(dot64(found.sums, found.sums), "partial class-sum products")
            errors: dict[str, float | None] = {}
            if options.uncertainty:
                c = layout.num_classes
                t = classmate_dots(stream, layout, known, found.sums[:c])
                errors = within_errors(group.sum_(t, "partial classmate dots"), layout, stats)
        # |u_i|² = 1 for every usable example (the sum of the ranks' parts, up to rounding).
        c = layout.num_classes
        slot = (layout.split * c + layout.class_index)[stats.usable]
        size = found.counts.shape[0]
        self_terms = torch.zeros(size, dtype=torch.float64).index_add_(
            0, slot, torch.ones(slot.shape, dtype=torch.float64)
        )
        counts = found.counts
        del found
        return class_mode_result(layout, products, self_terms, counts, errors)
