"""This rank's blocks of the pair-mode Gram: its own examples against all it is given.

The rank's own examples are cached in panels, as ``pair_mode.gram_matrix`` does for the whole
probe (at most ``cache_bytes`` of gradients; the rest of the span is recomputed once per
panel). Each panel is multiplied with itself, with the rest of the span, and with the column
spans of the rank's ``gram_tasks`` rectangles, whose gradients are computed on the fly. Own
examples are streamed in two halves, so that a rectangle over the second half of the rows
uses whole cached chunks. Every entry computed is written with its mirror image; the rest of
the (N, N) matrix stays zero, so summing every rank's matrix gives the Gram exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from monitor.distributed.shares import Span
from monitor.stiffness.gradients import ChunkStream, ExampleStats, GradientChunk, Rows, dot64
from monitor.stiffness.pair_mode import clean_rows, rows_nbytes

Cached = tuple[int, int, Rows]  # examples [start, stop) and their gradient rows


def _fill(gram: torch.Tensor, panel: Sequence[Cached], start: int, stop: int, g: Rows) -> None:
    """Every cached chunk against columns [start, stop), and the mirror image."""
    for s, e, cached in panel:
        block = dot64(cached, g)  # (b', P) x (b, P) -> (b', b)
        gram[s:e, start:stop] = block
        gram[start:stop, s:e] = block.T


def _own_chunks(stream: ChunkStream, start: int, span: Span) -> Iterator[GradientChunk]:
    """Chunks of the rank's span from ``start``, never crossing its midpoint."""
    a, b = span
    middle = (a + b) // 2
    for low, high in ((start, middle), (max(start, middle), b)):
        if low < high:
            yield from stream.chunks(low, high)


def rank_gram(
    stream: ChunkStream,
    stats: ExampleStats,
    size: int,
    span: Span,
    tasks: Sequence[tuple[Span, Span]],
    cache_bytes: int,
) -> torch.Tensor:
    """(N, N) float64 on the host: this rank's triangle of ``span`` and ``tasks``' rectangles
    (rows ⊆ ``span``, columns anywhere), each with its mirror image; zero elsewhere."""
    gram = torch.zeros(size, size, dtype=torch.float64)
    start, end = span
    while start < end:
        panel: list[Cached] = []
        held, stop = 0, start
        for chunk in _own_chunks(stream, start, span):
            g = clean_rows(chunk, stats)
            _fill(gram, panel, chunk.start, chunk.stop, g)
            gram[chunk.start : chunk.stop, chunk.start : chunk.stop] = dot64(g, g)
            panel.append((chunk.start, chunk.stop, g))
            held += rows_nbytes(g)
            stop = chunk.stop
            del chunk, g
            if held * (len(panel) + 1) > cache_bytes * len(panel):  # the next would not fit
                break
        for chunk in stream.chunks(stop, end):  # the rest of the span: recomputed per panel
            _fill(gram, panel, chunk.start, chunk.stop, clean_rows(chunk, stats))
            del chunk
        for (row_start, row_stop), (col_start, col_stop) in tasks:
            rows = [cached for cached in panel if row_start <= cached[0] and cached[1] <= row_stop]
            if not rows:
                continue
            for chunk in stream.chunks(col_start, col_stop):
                _fill(gram, rows, chunk.start, chunk.stop, clean_rows(chunk, stats))
                del chunk
        del panel
        start = stop
    return gram
