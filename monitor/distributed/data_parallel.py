"""The probe's examples split across ranks: a ``ModeRunner`` for the engine.

Class mode: each rank adds its span's unit gradients into class sums (``class_sums``); the
sums, self-terms and counts are summed over ranks with ``all_reduce`` and every rank forms the
same products and class matrices. Pair mode: each rank computes its blocks of the Gram
(``blocks.rank_gram``); the zero-padded matrices are summed. In both, every rank's per-example
norms, losses and correctness are summed into full vectors (each rank contributes its own span
and zeros elsewhere), so the engine's result is the one-process result, to rounding of the
float64 sums (summed in another order).
"""

from __future__ import annotations

import torch

from monitor.distributed.blocks import rank_gram
from monitor.distributed.launch import ProcessGroup, no_retry
from monitor.distributed.shares import Span, example_spans, gram_tasks
from monitor.stiffness.class_mode import (
    class_mode_result,
    class_sums,
    classmate_dots,
    within_errors,
)
from monitor.stiffness.gradients import ChunkStream, ExampleStats, dot64
from monitor.stiffness.inputs import EngineOptions
from monitor.stiffness.layout import ModeResult, ProbeLayout
from monitor.stiffness.pair_mode import DEFAULT_CACHE_BYTES, pair_mode_result


def merge_stats(group: ProcessGroup, stats: ExampleStats, span: Span) -> None:
    """Every rank's own examples' norms, losses and correctness, into full vectors everywhere."""
    mine = torch.zeros(stats.norms.shape[0], dtype=torch.bool)
    mine[span[0] : span[1]] = True
    # Correctness is 0/1 per example, or the share of correct tokens for a sequence: a float
    # like the others, summed the same way (only this rank's span is non-zero).
    for name in ("norms", "losses", "correct"):
        values = torch.where(mine, getattr(stats, name).to(torch.float64), 0.0)  # NaN kept
        setattr(stats, name, group.sum_(values, f"per-example {name}"))


class ExampleParallel:
    """Runs class or pair mode on this rank's share of the examples, then sums the parts."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group

    def settle(self) -> None:
        """Before the ranks exchange sums: nothing to wait for here (``fsdp`` waits for the
        others' passes, which are collectives there)."""

    def __call__(
        self,
        options: EngineOptions,
        stream: ChunkStream,
        layout: ProbeLayout,
        stats: ExampleStats,
        inputs: torch.Tensor,
    ) -> ModeResult:
        span = example_spans(layout.size, self.group.world_size)[self.group.rank]
        if options.mode == "class":
            return self._class(options, stream, layout, stats, span)
        return self._pair(options, stream, layout, stats, inputs, span)

    def _class(
        self,
        options: EngineOptions,
        stream: ChunkStream,
        layout: ProbeLayout,
        stats: ExampleStats,
        span: Span,
    ) -> ModeResult:
        found = class_sums(stream, layout, stats, span)
        assert found is not None, "example_spans gives every rank at least one example"
        group = self.group
        self.settle()
        # From here on every rank is inside the same sequence of collectives: an out-of-memory
        # retry by the engine would start it again on one rank only, so it is an error instead.
        with no_retry():
            group.sum_(found.sums, "class sums")
            group.sum_(found.self_terms, "class self-terms")
            group.sum_(found.counts, "class counts")
            merge_stats(group, stats, span)
            products = dot64(found.sums, found.sums)  # (sets·C, P) x (sets·C, P)
            errors: dict[str, float | None] = {}
            if options.uncertainty:
                c = layout.num_classes
                t = classmate_dots(stream, layout, stats, found.sums[:c], span)
                self.settle()
                errors = within_errors(group.sum_(t, "classmate dots"), layout, stats)
        self_terms, counts = found.self_terms, found.counts
        del found
        return class_mode_result(layout, products, self_terms, counts, errors)

    def _pair(
        self,
        options: EngineOptions,
        stream: ChunkStream,
        layout: ProbeLayout,
        stats: ExampleStats,
        inputs: torch.Tensor,
        span: Span,
    ) -> ModeResult:
        limit = options.memory_limit
        cache = limit // 2 if limit is not None else DEFAULT_CACHE_BYTES
        spans = example_spans(layout.size, self.group.world_size)
        tasks = gram_tasks(self.group.rank, spans)
        gram = rank_gram(stream, stats, layout.size, span, tasks, cache)
        self.settle()
        with no_retry():
            self.group.sum_(gram, "Gram blocks")
            merge_stats(self.group, stats, span)
        return pair_mode_result(gram, layout, stats, inputs, options.distance_bins)
