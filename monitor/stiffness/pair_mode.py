"""Pair mode: the exact N×N Gram of per-example gradients, then everything pairs can give.

From the Gram G_ij = g_i·g_j come the norms, cosine stiffness cos_ij = G_ij/(|g_i||g_j|)
and sign stiffness sign(G_ij) (Fort et al. 2019, arXiv 1901.09491), their class matrices
per pair set and the profile against input distance.

The Gram is built in blocks without holding N×P when it does not fit: a *panel* of as many
chunks as the memory budget allows is cached; each panel is multiplied with itself and with
the chunks after it, which are recomputed on the fly. With a budget that holds the whole
probe there is one panel and nothing is recomputed; with a budget of one chunk it is the
classic blocked algorithm, about N²/(2·batch) chunk computations. Half of
``memory_limit`` is the panel budget; the hook backend's chunks get at most a quarter
(``engine.chunk_size``).
"""

from __future__ import annotations

import torch

from monitor.stiffness.distance import distance_profile
from monitor.stiffness.gradients import ChunkStream, ExampleStats, GradientChunk, Rows, dot64
from monitor.stiffness.layers.rows import FactoredRows
from monitor.stiffness.layout import ModeResult, ProbeLayout
from monitor.stiffness.result import ClassStiffness, PairSetStiffness
from monitor.stiffness.statistics import StatisticsTracker
from monitor.stiffness.uncertainty import classmate_sums, jackknife_within

DEFAULT_CACHE_BYTES = 2**30


def clean_rows(chunk: GradientChunk, stats: ExampleStats) -> Rows:
    """Record the chunk; zero non-finite rows so they cannot turn whole Gram rows into NaN."""
    norms, _ = stats.record(chunk)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        if isinstance(chunk.grads, FactoredRows):
            chunk.grads.zero_rows(bad.to(chunk.grads.device))
        else:
            chunk.grads[bad.to(chunk.grads.device)] = 0.0
    return chunk.grads  # (b, P), or factored rows


def rows_nbytes(rows: Rows) -> int:
    if isinstance(rows, FactoredRows):
        return rows.nbytes()
    return rows.numel() * rows.element_size()


def gram_matrix(
    stream: ChunkStream,
    size: int,
    stats: ExampleStats,
    cache_bytes: int,
    tracker: StatisticsTracker | None = None,
) -> torch.Tensor:
    """All g_i·g_j, (N, N) float64 on the host, caching at most ``cache_bytes`` of gradients.

    A panel grows chunk by chunk until the next chunk would pass the budget (it always
    holds at least one chunk); what it holds is whatever the backend's rows hold (a (b, P)
    matrix, or factored rows with their materialised layers). A ``tracker`` sees each chunk
    once, on the first sweep (later panels recompute chunks it has already seen).
    """
    gram = torch.zeros(size, size, dtype=torch.float64)
    start = 0
    while start < size:
        panel: list[tuple[int, int, Rows]] = []
        held, stop = 0, start
        for chunk in stream.chunks(start, size):
            g = clean_rows(chunk, stats)
            if tracker is not None and start == 0:
                tracker.observe(chunk, stats.usable[chunk.start : chunk.stop])
            for s, e, cached in panel:
                block = dot64(cached, g)  # (b', P) x (b, P) -> (b', b)
                gram[s:e, chunk.start : chunk.stop] = block
                gram[chunk.start : chunk.stop, s:e] = block.T
            gram[chunk.start : chunk.stop, chunk.start : chunk.stop] = dot64(g, g)
            panel.append((chunk.start, chunk.stop, g))
            held += rows_nbytes(g)  # after dot64: materialised layers are counted too
            stop = chunk.stop
            del chunk, g
            if held * (len(panel) + 1) > cache_bytes * len(panel):  # the next would not fit
                break
        for chunk in stream.chunks(stop, size):  # recomputed once per panel
            g = clean_rows(chunk, stats)
            if tracker is not None and start == 0:
                tracker.observe(chunk, stats.usable[chunk.start : chunk.stop])
            for s, e, cached in panel:
                block = dot64(cached, g)  # (b', P) x (b, P) -> (b', b)
                gram[s:e, chunk.start : chunk.stop] = block
                gram[chunk.start : chunk.stop, s:e] = block.T
            del chunk, g
        del panel
        start = stop
    return gram


def _class_sums(
    values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, classes: torch.Tensor, c: int
) -> ClassStiffness:
    """Class matrix of ``values`` (N, N; zero on the diagonal and at unusable examples).

    ``rows``/``cols`` (N,) bool select the example sets of x1 and x2. With one-hot class
    indicators R (N, C): sums = Rᵀ V Q, and counts = (Σ R)(Σ Q)ᵀ - RᵀQ, the last term
    removing self-pairs where the two sets overlap.
    """
    onehot = torch.nn.functional.one_hot(classes, c).to(torch.float64)  # (N, C)
    r = onehot * rows.unsqueeze(1).to(torch.float64)  # (N, C)
    q = onehot * cols.unsqueeze(1).to(torch.float64)  # (N, C)
    sums = r.T @ values @ q  # (C, N) @ (N, N) @ (N, C) -> (C, C)
    counts = torch.outer(r.sum(0), q.sum(0)) - r.T @ q  # (C, C)
    return ClassStiffness.from_sums(sums.tolist(), counts.round().long().tolist())


def pair_mode(
    stream: ChunkStream,
    layout: ProbeLayout,
    stats: ExampleStats,
    inputs: torch.Tensor,
    bins: int,
    memory_limit: int | None,
    tracker: StatisticsTracker | None = None,
) -> ModeResult:
    """Gram, then cosine and sign class matrices per pair set and the distance profile; a
    ``tracker`` gets its sums on the first sweep and its classmate sums from the cosines."""
    cache = memory_limit // 2 if memory_limit is not None else DEFAULT_CACHE_BYTES
    # Passed on, not held here: pair_mode_result frees it once cosine and sign are formed.
    return pair_mode_result(
        gram_matrix(stream, layout.size, stats, cache, tracker), layout, stats, inputs, bins,
        tracker,
    )  # fmt: skip


def pair_mode_result(
    gram: torch.Tensor,
    layout: ProbeLayout,
    stats: ExampleStats,
    inputs: torch.Tensor,
    bins: int,
    tracker: StatisticsTracker | None = None,
) -> ModeResult:
    """Everything pairs give from the full (N, N) float64 Gram and every example's norm,
    wherever the Gram was formed (here, or in blocks on several processes)."""
    c = layout.num_classes
    usable = stats.usable  # (N,)
    pairs = usable.unsqueeze(1) & usable.unsqueeze(0)  # (N, N): both have a direction
    pairs.fill_diagonal_(False)  # self-pairs never count
    inverse = torch.where(usable, 1.0 / stats.norms, 0.0)  # (N,)
    zero = torch.zeros((), dtype=torch.float64)
    cosine = torch.where(pairs, gram * inverse.unsqueeze(1) * inverse.unsqueeze(0), zero)
    sign = torch.where(pairs, torch.sign(gram), zero)
    del gram
    held, train = layout.held_out & usable, layout.train & usable
    idx = layout.class_index
    if tracker is not None:  # t_i over usable training classmates, straight from the Gram
        tracker.classmates(classmate_sums(cosine, idx, train))
    pair_sets: dict[str, PairSetStiffness] = {}
    if layout.has_splits:
        for name, rows, cols in (("train-val", train, held), ("train-train", train, train)):
            pair_sets[name] = PairSetStiffness(
                cosine=_class_sums(cosine, rows, cols, idx, c),
                sign=_class_sums(sign, rows, cols, idx, c),
            )
    cosine_spread = jackknife_within(classmate_sums(cosine, idx, held), idx, held, c)
    sign_spread = jackknife_within(classmate_sums(sign, idx, held), idx, held, c)
    return ModeResult(
        cosine=_class_sums(cosine, held, held, idx, c),
        sign=_class_sums(sign, held, held, idx, c),
        uncertainty={
            "within_class": cosine_spread["within"],
            "within_class_pooled": cosine_spread["within_pooled"],
            "sign_within_class": sign_spread["within"],
            "sign_within_class_pooled": sign_spread["within_pooled"],
        },
        pair_sets=pair_sets,
        distance=distance_profile(inputs, cosine, pairs & held.unsqueeze(1) & held, idx, bins),
    )
