"""Class mode: the exact cosine class-stiffness matrix in time linear in N, memory O(C·P).

Fort et al. 2019 (arXiv 1901.09491) define C(a,b) as the mean of cos(g_i, g_j) over pairs
i in class a, j in class b, i ≠ j. With unit gradients u_i = g_i/|g_i| and class sums
S_a = Σ_{i in a} u_i (n_a usable examples) that mean is (DESIGN §3):

    C(a,b) = S_a·S_b / (n_a n_b)                  a ≠ b
    C(a,a) = (|S_a|² - Σ_{i in a}|u_i|²) / (n_a (n_a - 1))

Σ|u_i|² is n_a up to rounding; subtracting the computed value removes the self-pairs
exactly rather than up to the rounding of each |u_i|. With splits, one (2C, P) tensor
holds the held-out sums (rows 0..C-1) and the training sums (rows C..2C-1), so one
``index_add_`` per chunk serves every pair set. Only one chunk of per-example gradients
is alive at a time. Class mode yields cosine stiffness only: sign(g_i·g_j) is not a
function of class sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.errors import EngineError
from monitor.stiffness.gradients import (
    ChunkStream,
    ExampleStats,
    Rows,
    dot64,
    squared_norms64,
)
from monitor.stiffness.layers.rows import FactoredRows
from monitor.stiffness.layout import ModeResult, ProbeLayout
from monitor.stiffness.result import ClassStiffness, PairSetStiffness
from monitor.stiffness.statistics import StatisticsTracker
from monitor.stiffness.uncertainty import jackknife_within


def stiffness_from_products(
    products: torch.Tensor,
    self_terms: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> ClassStiffness:
    """ClassStiffness from class-sum products (C, C) and usable counts per class (C,).

    ``self_terms`` (C,) is given when rows and cols are the same example set: the diagonal
    then loses its self-pairs, Σ_{i in a}|u_i|² from the sum and n_a from the pair count.
    """
    sums = products.clone()
    counts = torch.outer(rows, cols)  # (C,) x (C,) -> (C, C) pairs per cell
    if self_terms is not None:
        sums.diagonal().sub_(self_terms)
        counts.diagonal().sub_(rows)
    return ClassStiffness.from_sums(sums.tolist(), counts.tolist())


def classmate_dots(
    stream: ChunkStream,
    layout: ProbeLayout,
    stats: ExampleStats,
    sums: torch.Tensor,
    examples: tuple[int, int] | None = None,
) -> torch.Tensor:
    """t_i = u_i·S_a - |u_i|² for every held-out usable example: a second pass over the probe.

    The jackknife (``uncertainty``) needs each example's summed cosine with its classmates,
    which the class sums alone cannot give; recomputing the gradients costs one more pass.
    ``examples`` limits the pass to examples [start, stop) (zero elsewhere): a distributed run
    gives each rank its own and sums the results.
    """
    members = stats.usable & layout.held_out  # (N,)
    return slot_dots(stream, stats, sums, layout.class_index, members, examples)


def slot_dots(
    stream: ChunkStream,
    stats: ExampleStats,
    sums: torch.Tensor,
    slots: torch.Tensor,
    members: torch.Tensor,
    examples: tuple[int, int] | None = None,
) -> torch.Tensor:
    """t_i = u_i·S_slot(i) - |u_i|² for every example in ``members`` (N,), zero elsewhere.

    ``slots`` (N,) are the examples' rows in ``sums``: the held-out classes for the jackknife,
    the training classes too for the opposing share (``statistics``), which shares the pass.
    Only the span the members cover is streamed (within ``examples``): the probe is
    split-major, so training examples alone are its tail.
    """
    size = int(slots.shape[0])
    t = torch.zeros(size, dtype=torch.float64)
    start, stop = examples or (0, size)
    found = members[start:stop].nonzero().squeeze(1) + start
    if not found.numel():
        return t
    for chunk in stream.chunks(int(found[0]), int(found[-1]) + 1):
        span = slice(chunk.start, chunk.stop)
        norms = stats.norms[span]
        own = slots[span]
        if isinstance(chunk.grads, FactoredRows):  # g_i·S_a(i), parameter by parameter
            along = chunk.grads.project(sums, own.to(sums.device)) / norms
        else:
            projections = dot64(chunk.grads, sums)  # (b, P) x (C, P) -> (b, C): one GEMM
            rows = torch.arange(chunk.stop - chunk.start)
            along = projections[rows, own] / norms  # u_i·S_a(i)
        self_term = squared_norms64(chunk.grads) / norms.square()  # |u_i|², 1 up to rounding
        t[span] = torch.where(members[span], along - self_term, 0.0)
        del chunk
    return t


def _zeros_like_rows(grads: Rows, rows: int) -> torch.Tensor:
    """A (rows, P) float64 zero matrix on the gradients' device. Out of memory here with a
    chunk of one example alive is the sums' own size: the error says what they need (with a
    larger chunk, a smaller one may fit: the engine retries).

    float64 whatever the rows' dtype: |S_a|² − n_a cancels most digits, and the products
    of float32 sums over P columns were 8.8e-5 off float64 on ResNet-18 (docs/precision.md).
    The per-chunk work stays in the rows' dtype; only the accumulation is float64."""
    dtype = torch.float64
    try:
        return torch.zeros(rows, grads.shape[1], dtype=dtype, device=grads.device)
    except torch.cuda.OutOfMemoryError as error:
        if grads.shape[0] > 1:
            raise
        need = rows * grads.shape[1] * torch.finfo(dtype).bits / 8 / 2**30
        raise EngineError(
            f"out of memory allocating class mode's class sums: {rows} sums of "
            f"{grads.shape[1]} parameters in {dtype} need {need:.2f} GiB on {grads.device}; "
            "select fewer parameters (stiffness.include/exclude) or use pair mode"
        ) from error


@dataclass(frozen=True, eq=False)
class ClassSums:
    """What one pass over (part of) the probe adds up: everything class mode needs from it.

    ``sums`` (sets·C, P) float64: S_a per slot (held-out classes, then training classes);
    ``self_terms`` (sets·C,) float64: Σ |u_i|² per slot; ``counts`` (sets·C,) int64: usable
    examples per slot. Each is a sum over examples (and ``sums``' products and ``self_terms``
    a sum over parameters too), so parts computed apart add up to the whole.
    """

    sums: torch.Tensor
    self_terms: torch.Tensor
    counts: torch.Tensor


def class_sums(
    stream: ChunkStream,
    layout: ProbeLayout,
    stats: ExampleStats,
    examples: tuple[int, int] | None = None,
    tracker: StatisticsTracker | None = None,
) -> ClassSums | None:
    """Stream examples [start, stop) (``examples``; the whole probe by default) once, adding each
    usable example's unit gradient to its slot's sum. None when that is empty. A ``tracker``
    sees every chunk before it is scaled (``statistics``)."""
    c = layout.num_classes
    sets = 2 if layout.has_splits else 1
    slot = layout.split * c + layout.class_index  # (N,) row of each example in the sums
    sums: torch.Tensor | None = None  # (sets·C, P), allocated with the first chunk
    self_terms = torch.zeros(sets * c, dtype=torch.float64)  # Σ |u_i|² per slot
    counts = torch.zeros(sets * c, dtype=torch.int64)  # usable examples per slot
    for chunk in stream.chunks(*(examples or (0, layout.size))):
        norms, usable = stats.record(chunk)
        if tracker is not None:
            tracker.observe(chunk, usable)
        if sums is None:
            sums = _zeros_like_rows(chunk.grads, sets * c)
        keep = usable.nonzero().squeeze(1)  # (k,) local rows with a direction
        if keep.numel() and isinstance(chunk.grads, FactoredRows):
            device = chunk.grads.device
            where = slot[chunk.start : chunk.stop][keep]  # (k,)
            scale = (1.0 / norms[keep]).to(device=device, dtype=chunk.grads.dtype)
            chunk.grads.add_class_sums(sums, where, keep, scale)  # host indices: see Groups
            self_terms.index_add_(0, where, torch.ones(where.shape, dtype=torch.float64))
            counts.index_add_(0, where, torch.ones_like(where))
        elif keep.numel():
            assert isinstance(chunk.grads, torch.Tensor)
            scale = (1.0 / norms[keep]).to(device=chunk.grads.device, dtype=chunk.grads.dtype)
            if keep.numel() == chunk.grads.shape[0]:  # the usual case: scale in place
                units = chunk.grads
            else:
                units = chunk.grads.index_select(0, keep.to(chunk.grads.device))  # (k, P)
            units.mul_(scale.unsqueeze(1))  # u_i = g_i / |g_i|
            where = slot[chunk.start : chunk.stop][keep]  # (k,)
            # Per slot in the rows' dtype (a class-ordered chunk has one or two), then those
            # few rows into the float64 sums: S[slot_i] += u_i.
            present, local = torch.unique(where, return_inverse=True)
            part = units.new_zeros(present.numel(), units.shape[1])
            part.index_add_(0, local.to(units.device), units)  # (count, P)
            sums.index_add_(0, present.to(units.device), part.to(sums.dtype))
            self_terms.index_add_(0, where, squared_norms64(units))
            counts.index_add_(0, where, torch.ones_like(where))
            del units
        del chunk
    return None if sums is None else ClassSums(sums, self_terms, counts)


def within_errors(
    t: torch.Tensor, layout: ProbeLayout, stats: ExampleStats
) -> dict[str, float | None]:
    """The jackknife standard errors of the within-class values from ``classmate_dots``."""
    members = stats.usable & layout.held_out
    spread = jackknife_within(t, layout.class_index, members, layout.num_classes)
    return {"within_class": spread["within"], "within_class_pooled": spread["within_pooled"]}


def class_mode_result(
    layout: ProbeLayout,
    products: torch.Tensor,
    self_terms: torch.Tensor,
    counts: torch.Tensor,
    errors: dict[str, float | None] | None = None,
) -> ModeResult:
    """The class matrices of every pair set from the class-sum products (sets·C, sets·C),
    ``self_terms`` and ``counts`` (sets·C,): the end of class mode, wherever the sums
    were formed."""
    c = layout.num_classes
    val, train = slice(0, c), slice(c, 2 * c)
    cosine = stiffness_from_products(products[val, val], self_terms[val], counts[val], counts[val])
    pair_sets: dict[str, PairSetStiffness] = {}
    if layout.has_splits:
        pair_sets["train-val"] = PairSetStiffness(
            cosine=stiffness_from_products(products[train, val], None, counts[train], counts[val])
        )
        pair_sets["train-train"] = PairSetStiffness(
            cosine=stiffness_from_products(
                products[train, train], self_terms[train], counts[train], counts[train]
            )
        )
    return ModeResult(cosine=cosine, pair_sets=pair_sets, uncertainty=errors or {})


def class_mode(
    stream: ChunkStream,
    layout: ProbeLayout,
    stats: ExampleStats,
    uncertainty: bool = False,
    tracker: StatisticsTracker | None = None,
) -> ModeResult:
    """Stream the probe once, accumulating class sums of unit gradients per split.

    With ``uncertainty`` a second pass gives the jackknife standard errors of the
    within-class values (``monitor.stiffness.uncertainty``). A ``tracker`` sees every chunk
    of the first pass and gets the training examples' classmate sums from a second pass,
    the jackknife's when both are asked for.
    """
    found = class_sums(stream, layout, stats, tracker=tracker)
    if found is None:  # an empty probe never gets here: the engine rejects it
        raise ValueError("class mode needs at least one example")
    products = dot64(found.sums, found.sums)  # (sets·C, P) x (sets·C, P) -> (sets·C, sets·C)
    errors: dict[str, float | None] = {}
    c = layout.num_classes
    if tracker is not None:
        members = tracker.members(stats.usable)  # (N,) the training split's usable examples
        if uncertainty:
            members = members | (stats.usable & layout.held_out)
        slots = layout.split * c + layout.class_index  # (N,) rows in the sums
        t = slot_dots(stream, stats, found.sums, slots, members)
        tracker.classmates(t)
        if uncertainty:
            errors = within_errors(t, layout, stats)
    elif uncertainty:
        errors = within_errors(classmate_dots(stream, layout, stats, found.sums[:c]), layout, stats)
    self_terms, counts = found.self_terms, found.counts
    del found  # the sums: (sets·C, P) float64
    return class_mode_result(layout, products, self_terms, counts, errors)
