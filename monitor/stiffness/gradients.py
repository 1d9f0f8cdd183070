"""The seam between per-example gradient backends and the stiffness bookkeeping.

A *gradient provider* turns a contiguous range of probe examples into a ``GradientChunk``:
their per-example gradients flattened to rows, (b, P), plus their losses and whether the
model got them right. Class mode and pair mode only ever see chunks, so the hook backend's
``FactoredRows`` (layer rules and ghost norms, DESIGN §3) and the (b, P) matrices of
``FuncGradients`` and the loop serve them alike.

``ChunkStream`` runs a provider over a range in chunks of ``batch_size``, halves the chunk
after a CUDA out-of-memory error in the provider (the engine restarts a mode that runs out
later), and times the provider's work. ``ExampleStats`` collects
what every mode reports per example (norms, losses, correctness) and applies the zero-norm
rule in one place.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from monitor.errors import EngineError
from monitor.stiffness.layers.rows import FactoredRows
from monitor.stiffness.products import gram64, squared_norms

#: A chunk's per-example gradients: a (b, P) matrix, or the hook backend's factored rows.
Rows = torch.Tensor | FactoredRows


@dataclass(frozen=True, eq=False)
class GradientChunk:
    """Per-example results for probe examples ``start`` to ``stop`` (exclusive).

    ``grads`` (b, P) lives on the compute device in float32 (float64 for float64 models),
    or is ``FactoredRows`` (the hook backend) that answer the same questions without the
    matrix; ``losses`` (b,) float64 and ``correct`` (b,) live on the host: bool for one
    class per example, float (the share of labelled tokens predicted right) for sequences.
    """

    start: int
    stop: int
    grads: Rows
    losses: torch.Tensor
    correct: torch.Tensor


class GradientProvider(Protocol):
    """Anything that computes per-example gradients for a range of probe examples."""

    @property
    def device(self) -> torch.device: ...

    def __call__(self, start: int, stop: int) -> GradientChunk: ...


class MappedRows:
    """A provider whose chunks are ``inner``'s with the rows replaced by ``map_rows(rows)``
    (a projection, a sum over ranks). ``device`` and ``example_bytes`` are the inner
    provider's: the inner chunk is formed first, so it is what bounds a chunk's memory."""

    def __init__(self, inner: GradientProvider) -> None:
        self.inner = inner
        self.example_bytes = int(getattr(inner, "example_bytes", 0) or 0)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def map_rows(self, rows: Rows) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, start: int, stop: int) -> GradientChunk:
        chunk = self.inner(start, stop)
        with torch.no_grad():
            rows = self.map_rows(chunk.grads)
        return GradientChunk(start, stop, rows, chunk.losses, chunk.correct)


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so timings measure the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_note(device: torch.device) -> str:
    """What an out-of-memory message says about the device."""
    if device.type != "cuda":
        return f"device {device}"
    free, total = torch.cuda.mem_get_info(device)
    return f"device {device}: {free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB"


def out_of_memory(configured: int, device: torch.device) -> EngineError:
    """The error for out-of-memory at a chunk of one example."""
    return EngineError(
        "out of memory computing per-example gradients even with batch size 1 (configured "
        f"batch_size {configured}; {memory_note(device)}); select fewer parameters or use "
        "a larger device"
    )


def release_cached_memory(device: torch.device) -> None:
    """Give memory freed by a failed attempt back to the driver: a sidecar shares the GPU
    with the trainer. Called after the ``except`` block, whose traceback holds the failed
    attempt's tensors."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


class ChunkStream:
    """Runs a provider over example ranges in chunks; shrinks the chunk on out-of-memory.

    The shrunken chunk size sticks for the rest of the evaluation (pair mode streams the
    probe several times), so one OOM is paid once, not at every pass. An out-of-memory
    error in what the consumer does with a chunk is the engine's to retry (``engine``):
    ``batch_size`` tells it where this stream got to.
    """

    def __init__(
        self, provider: GradientProvider, batch_size: int, configured: int | None = None
    ) -> None:
        self.provider = provider
        self.batch_size = batch_size
        self.initial_batch_size = batch_size if configured is None else configured
        self.seconds = 0.0

    def chunks(self, start: int, stop: int) -> Iterator[GradientChunk]:
        position = start
        device = self.provider.device
        while position < stop:
            end = min(stop, position + self.batch_size)
            began = time.perf_counter()
            failed = False
            try:
                chunk = self.provider(position, end)
                _synchronize(device)
            except torch.cuda.OutOfMemoryError as error:
                self.seconds += time.perf_counter() - began
                if end - position <= 1:
                    raise out_of_memory(self.initial_batch_size, device) from error
                self.batch_size = max(1, (end - position) // 2)
                failed = True
            if failed:
                release_cached_memory(device)
                continue
            self.seconds += time.perf_counter() - began
            position = end
            yield chunk
            # Drop our reference before computing the next chunk: at most one chunk's
            # per-example gradients stay alive in class mode.
            del chunk


def column_blocks(
    rows: int, width: int, budget: int = 2**23, most: int | None = None
) -> Iterator[slice]:
    """Column slices of a (rows, width) matrix holding about ``budget`` elements each (and
    at most ``most`` columns)."""
    step = max(1, budget // max(rows, 1))
    if most is not None:
        step = min(step, most)
    for begin in range(0, width, step):
        yield slice(begin, min(width, begin + step))


def dot64(a: Rows, b: Rows) -> torch.Tensor:
    """All dot products a_i·b_j: (m, P) x (n, P) -> (m, n) float64 on the host.

    float32 rows: products of at most ``products.BLOCK`` columns summed in float64
    (``products.gram64``), so rounding does not grow with P. float64 rows (class mode's
    sums) and a mix of the two (float32 rows against float64 sums): float64 products in
    column blocks of at most 2^16 (one (10, 700k) product took 30 ms on the CPU, in blocks
    11 ms). Stiffness subtracts nearly equal sums (|S_a|² - n_a), which this keeps well
    inside 1e-5.
    """
    if isinstance(a, FactoredRows) and isinstance(b, FactoredRows):
        return a.dot64(b)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), "rows of one kind"
    if a.dtype == b.dtype != torch.float64:
        return gram64(a, b).cpu()
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for cols in column_blocks(max(a.shape[0], b.shape[0]), a.shape[1], most=2**16):
        out += a[:, cols].double() @ b[:, cols].double().T  # (m, p) @ (p, n) -> (m, n)
    return out.cpu()


def squared_norms64(g: Rows) -> torch.Tensor:
    """Row-wise |g_i|², (b, P) -> (b,) float64 on the host.

    float32 norms of at most ``products.BLOCK`` columns, squared and summed in float64: one
    float32 ``vector_norm`` over 269k columns was 5.6e-6 off (the cosines need 1e-5), a
    float64 reduction over float32 rows 20× slower on the CPU (93 ms against 5 ms for a
    128 × 269k chunk); the blocked norm is 5e-8 off and faster than either.
    """
    if isinstance(g, FactoredRows):
        return g.squared_norms64()
    return squared_norms(g).cpu()


class ExampleStats:
    """Per-example norms, losses and correctness, and the zero-norm rule.

    An example whose gradient norm is at or below ``min_grad_norm`` has no direction: it is
    left out of every pair. Non-finite gradients (NaN/inf from a diverged model or input)
    get the same treatment rather than poisoning every pair they touch; both are counted in
    ``Counts.zero_gradient``.
    """

    def __init__(self, size: int, min_grad_norm: float) -> None:
        self.min_grad_norm = min_grad_norm
        self.norms = torch.full((size,), math.nan, dtype=torch.float64)
        self.losses = torch.full((size,), math.nan, dtype=torch.float64)
        self.correct = torch.zeros(size, dtype=torch.float64)  # 0/1, or a token share

    def record(self, chunk: GradientChunk) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the chunk's statistics; return its norms (b,) and usable mask (b,)."""
        norms = squared_norms64(chunk.grads).sqrt()
        usable = torch.isfinite(norms) & (norms > self.min_grad_norm)
        self.norms[chunk.start : chunk.stop] = norms
        self.losses[chunk.start : chunk.stop] = chunk.losses
        self.correct[chunk.start : chunk.stop] = chunk.correct
        return norms, usable

    def restore_order(self, order: torch.Tensor) -> None:
        """Statistics recorded for a reordered probe (position i was example order[i]) put
        back in the caller's order."""
        for name in ("norms", "losses", "correct"):
            values = getattr(self, name)
            restored = torch.empty_like(values)
            restored[order] = values
            setattr(self, name, restored)

    @property
    def usable(self) -> torch.Tensor:
        return torch.isfinite(self.norms) & (self.norms > self.min_grad_norm)

    def norm_values(self) -> tuple[float | None, ...]:
        return tuple(v if math.isfinite(v) else None for v in self.norms.tolist())
