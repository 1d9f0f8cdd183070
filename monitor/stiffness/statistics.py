"""Gradient statistics of the probe's training split, from the passes the modes already make.

The probe's training split holds training examples with the labels the trainer used, noise
included: where memorisation happens (DESIGN §5). Over its usable examples (a finite
gradient with a norm above ``min_grad_norm``, as for stiffness) this module measures:

- **Gradient disparity** (Forouzesh & Thiran 2021, "Disparity Between Batches as a Signal
  for Early Stopping", arXiv 2107.06665): D = |ḡ_A - ḡ_B|₂, the ℓ2 distance between the
  gradients of two disjoint batches of the training set. A batch's gradient is that of its
  *mean* loss, so ḡ is the mean raw (unnormalised) per-example gradient of each half. The
  paper's definition is this plain ℓ2 norm of the mean-loss gradients, and that is what is
  implemented: no division by the loss or by |ḡ| (those would turn the "the halves no
  longer agree" signal into a different quantity, and the paper's early-stopping experiments
  track the raw norm). The paper averages D over pairs of many small batches; here the two
  batches are the halves of the training split, so D is smaller than with mini-batches
  (roughly by √(half size / batch size)) and comparable across checkpoints of one probe,
  not across probes of different sizes. The halves are fixed: training examples ordered by
  their source index (their position in the probe file), a permutation from a generator
  seeded with ``HALVES_SEED``, the first ⌊n/2⌋ ranks in half A; identical at every
  checkpoint whatever order the engine visits them in. Class mode accumulates Σ_A g and
  Σ_B g: two P-sized float64 sums.
- **GSNR** (Liu et al. 2020, "Understanding Why Neural Networks Generalize Well Through GSNR
  of Parameters", ICLR): per parameter j, r_j = mean(g_j)² / var(g_j) over the training
  split (population variance, 1/n: the variance over the empirical training distribution,
  the paper's definition). Summarised as the paper does, by the mean over parameters
  (``gsnr``), and by the lower median (``gsnr_median``), which one heavy-tailed parameter
  cannot move. Left out, because their ratio is rounding, not signal: parameters whose
  variance is at most 1e-12 of their mean square (unused, dead, constant), and those whose
  root-mean-square gradient is at most the rows' machine epsilon times the largest
  parameter's (a gradient that is zero in exact arithmetic comes out of the backward pass as
  cancellation residue, 1e-21 where others are 1: GPT-2's, in float64). Needs Σg (the two
  halves' sums) and Σg²: one more P-sized float64 sum. From the hook backend's factored
  rows, a Linear on vectors gives Σ_i G_i² as (L∘L)ᵀ(R∘R), one weight-sized product; other
  layers (conv, embedding, a Linear over positions) have no such form (a square is not a
  product of sums), so their per-example gradients are formed for the chunk's training rows,
  one layer at a time, and squared.
- **Opposing share**: an example opposes its class when its mean cosine to the other
  training examples with the same label is negative; the share is over usable examples with
  at least one usable classmate, and the *suspect labels* are those examples (source index,
  label, mean cosine), most negative first, at most ``SUSPECTS``. Class mode has the
  training class sums of unit gradients S_a already; t_i = u_i·S_a - |u_i|² needs each
  example's gradient again: a second pass over the training split (shared with the
  jackknife's when ``uncertainty`` is on). Pair mode reads it from the Gram's cosines for
  free. Measured costs: BENCHMARKS.md, "Gradient statistics of the training split".
"""

from __future__ import annotations

import torch

from monitor.stiffness.gradients import GradientChunk, column_blocks
from monitor.stiffness.layers.rows import FactoredRows, ParamBlock
from monitor.stiffness.layers.uses import Outer
from monitor.stiffness.layout import ProbeLayout
from monitor.stiffness.statistics_result import GradientStatistics, SuspectLabel

HALVES_SEED = 0
SUSPECTS = 25  # suspect labels kept per checkpoint
CONSTANT = 1e-12  # variance at most this share of the mean square: no GSNR


def training_halves(layout: ProbeLayout, source_indices: tuple[int, ...]) -> torch.Tensor:
    """(N,) int64: 0 or 1 for the training half of each training example, -1 otherwise."""
    half = torch.full((layout.size,), -1, dtype=torch.int64)
    train = layout.train.nonzero().squeeze(1).tolist()
    ranked = sorted(train, key=lambda i: (source_indices[i], i))  # by position in the file
    generator = torch.Generator().manual_seed(HALVES_SEED)
    permutation = torch.randperm(len(ranked), generator=generator).tolist()
    first = len(ranked) // 2
    for rank, i in enumerate(ranked):
        half[i] = 0 if permutation[rank] < first else 1
    return half


def _squares(block: ParamBlock, rows: torch.Tensor) -> torch.Tensor:
    """Σ_i G_i² (elementwise) over ``rows`` for one parameter: (numel,) float64.

    A single use at one position per example (a Linear on vectors), G_i = l_i r_iᵀ, gives
    Σ_i G_i² = (L∘L)ᵀ(R∘R): one weight-sized product. Anything else forms this layer's
    per-example gradients for the rows, squares them in their dtype and sums in float64."""
    use = block.uses[0]
    if len(block.uses) == 1 and isinstance(use, Outer) and use.steps == 1 and not block.cached:
        left = use.left[:, 0].index_select(0, rows).square()  # (k, rows)
        right = use.right[:, 0].index_select(0, rows).square()  # (k, cols)
        return (left.T @ right).reshape(-1).double()  # (rows, k) @ (k, cols) -> (rows·cols,)
    part = block.transient_rows().index_select(0, rows)  # (k, numel)
    return part.square().sum(dim=0, dtype=torch.float64)


class StatisticsTracker:
    """Accumulates Σ_A g, Σ_B g and Σ g² over the usable training examples, chunk by chunk,
    then takes the classmate sums t_i from the mode (``classmates``) and gives the result.

    ``layout`` (with its ``source_indices``) is in the order the mode visits the probe.
    ``per_parameter`` is False when the rows are projected (``stiffness.projection``): a
    projected coordinate mixes many parameters, so its mean²/variance is not the paper's GSNR
    and none is reported (disparity and the opposing share are distances and cosines, which
    the projection estimates without bias, and are kept)."""

    def __init__(self, layout: ProbeLayout, per_parameter: bool = True) -> None:
        self.layout = layout
        self.per_parameter = per_parameter
        self.source_indices = layout.source_indices or tuple(range(layout.size))
        self.half = training_halves(layout, self.source_indices)
        self.sums: torch.Tensor | None = None  # (2, P) float64: Σ_A g, Σ_B g
        self.squares: torch.Tensor | None = None  # (P,) float64: Σ g²
        self.t: torch.Tensor | None = None  # (N,) float64: Σ cos to usable train classmates
        self.epsilon = torch.finfo(torch.float64).eps  # the rows' dtype's, set by ``observe``

    def observe(self, chunk: GradientChunk, usable: torch.Tensor) -> None:
        """Add the chunk's usable training rows (``usable``: (b,) bool) to the sums. Called
        before a mode touches the rows (class mode scales dense rows in place)."""
        half = self.half[chunk.start : chunk.stop]
        keep = ((half >= 0) & usable).nonzero().squeeze(1)  # (k,) local rows
        grads = chunk.grads
        if self.sums is None:
            self.epsilon = torch.finfo(grads.dtype).eps
            self.sums = torch.zeros(2, grads.shape[1], dtype=torch.float64, device=grads.device)
            self.squares = torch.zeros(grads.shape[1], dtype=torch.float64, device=grads.device)
        assert self.squares is not None
        if not keep.numel():
            return
        where = half[keep]  # (k,) 0 or 1
        if isinstance(grads, FactoredRows):
            ones = torch.ones(keep.numel(), dtype=grads.dtype, device=grads.device)
            grads.add_class_sums(self.sums, where, keep, ones)  # Σ_half g, layer by layer
            rows = keep.to(grads.device)
            for block, cols in zip(grads.blocks, grads.columns, strict=True):
                if block.uses and self.per_parameter:
                    self.squares[cols] += _squares(block, rows)
            return
        rows, where = keep.to(grads.device), where.to(grads.device)
        for cols in column_blocks(int(keep.numel()), int(grads.shape[1])):
            part = grads[:, cols].index_select(0, rows)  # (k, p) in the rows' dtype
            self.sums[:, cols].index_add_(0, where, part.double())
            if self.per_parameter:
                self.squares[cols] += part.square().sum(dim=0, dtype=torch.float64)
            del part

    def members(self, usable: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the usable training examples."""
        return usable & self.layout.train

    def classmates(self, t: torch.Tensor) -> None:
        """t_i (N,) float64: example i's summed cosine to its usable training classmates."""
        self.t = t.to(torch.float64).cpu()

    def result(self, usable: torch.Tensor) -> GradientStatistics:
        """The statistics once every chunk was observed and ``classmates`` was given."""
        members = self.members(usable)
        counts = (int((members & (self.half == 0)).sum()), int((members & (self.half == 1)).sum()))
        disparity = gsnr = median = None
        kept = 0
        if self.sums is not None and self.squares is not None:
            if min(counts) > 0:
                gap = self.sums[0] / counts[0] - self.sums[1] / counts[1]  # (P,)
                disparity = float(torch.linalg.vector_norm(gap))
            n = sum(counts)
            if n >= 2 and self.per_parameter:
                mean = (self.sums[0] + self.sums[1]) / n  # (P,)
                second = self.squares / n
                variance = second - mean.square()
                floor = self.epsilon**2 * second.max()  # rounding level: see the module
                varies = (variance > CONSTANT * second) & (second > floor)
                ratio = (mean.square()[varies] / variance[varies]).cpu()  # (kept,)
                kept = int(ratio.numel())
                if kept:
                    gsnr = float(ratio.mean())
                    # The lower median; kthvalue is linear where a sort of P values is not.
                    median = float(ratio.kthvalue((kept - 1) // 2 + 1).values)
        share, eligible, suspects = self._opposing(members)
        return GradientStatistics(
            gradient_disparity=disparity,
            gsnr=gsnr,
            gsnr_median=median,
            gsnr_parameters=kept,
            opposing_share=share,
            examples=eligible,
            halves=counts,
            suspect_labels=suspects,
        )

    def _opposing(
        self, members: torch.Tensor
    ) -> tuple[float | None, int, tuple[SuspectLabel, ...]]:
        """The opposing share, how many examples it rests on, and the suspect labels."""
        if self.t is None:
            return None, 0, ()
        index = self.layout.class_index
        mates = torch.bincount(index[members], minlength=self.layout.num_classes)[index] - 1
        eligible = members & (mates >= 1)  # (N,)
        mean = torch.where(eligible, self.t / mates.clamp(min=1), 0.0)  # (N,) mean cosine
        opposing = eligible & (mean < 0)
        count = int(eligible.sum())
        share = int(opposing.sum()) / count if count else None
        found = opposing.nonzero().squeeze(1).tolist()
        found.sort(key=lambda i: (float(mean[i]), self.source_indices[i]))
        suspects = tuple(
            SuspectLabel(self.source_indices[i], self.layout.classes[int(index[i])], float(mean[i]))
            for i in found[:SUSPECTS]
        )
        return share, count, suspects
