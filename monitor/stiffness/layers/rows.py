"""A chunk's per-example gradients without the (b, P) matrix: ``FactoredRows``.

The hook backend hands class mode and pair mode this object where the other backends hand a
(b, P) tensor. It answers what the modes ask of rows (squared norms, dot products with another
chunk's rows, weighted class sums, projections on class sums) parameter by parameter, each
the cheaper way (DESIGN §3):

- a parameter used at T positions per example (summed over every use u, v of a tied
  weight, cross-use terms included) costs Σ_uv T_u T_v (rows+cols) per pair in the ghost
  form, and rows·cols per pair once materialised (plus T·rows·cols per example to form);
- norms take the ghost form when Σ_uv T_u T_v (rows+cols) < Σ_u T_u rows cols;
- class sums never materialise: Σ_i w_i G_i for every class of a chunk is one batched
  product per use (``grouping``), or one product per class and use where padding the
  classes to one size would cost more.

Products are formed in the rows' dtype and summed over parameters in float64, as
``gradients.dot64`` does over column blocks.
"""

from __future__ import annotations

import itertools

import torch

from monitor.stiffness.layers.grouping import Groups
from monitor.stiffness.layers.uses import Factors, Outer, Use, ghost_cross, ghost_self, zeroed
from monitor.stiffness.products import gram64, squared_norms


class ParamBlock:
    """One selected parameter's per-example gradients in a chunk: the sum of its uses."""

    def __init__(self, name: str, numel: int, uses: list[Use], batch: int) -> None:
        self.name, self.numel, self.uses, self.batch = name, numel, uses, batch
        self._dense: torch.Tensor | None = None
        self._factors: list[Factors] | None = None
        self.factorable = bool(uses) and all(u.has_factors for u in uses)

    @property
    def factors(self) -> list[Factors]:
        """Every use's (L, R), formed on first request (a conv unfolds its input here)."""
        if self._factors is None:
            found = [u.factors() for u in self.uses]
            self._factors = [f for f in found if f is not None]
        return self._factors

    def _ghost_cost(self) -> float:
        """Multiply-adds per pair of examples in the ghost form (inf when there is none)."""
        if not self.factorable:
            return float("inf")
        width = sum(u.ghost_width for u in self.uses) / len(self.uses)
        steps = sum(u.steps for u in self.uses)
        return float(steps * steps * width)

    @property
    def ghost_norms(self) -> bool:
        forming = sum(u.steps * u.rows * u.cols for u in self.uses)
        return self._dense is None and self._ghost_cost() < forming

    @property
    def cached(self) -> bool:
        """Whether the per-example gradients are already materialised (and kept)."""
        return self._dense is not None

    @property
    def ghost_pairs(self) -> bool:
        return self._ghost_cost() < self.numel

    def materialised(self) -> torch.Tensor:
        """(b, numel), formed once and kept (pair mode caches it in its panel)."""
        if self._dense is None:
            self._dense = self.transient_rows()
        return self._dense

    def transient_rows(self) -> torch.Tensor:
        """(b, numel) like ``materialised``, but not kept when not already formed."""
        if self._dense is not None:
            return self._dense
        if not self.uses:
            raise ValueError(f"parameter {self.name} has no use in this chunk")
        total = self.uses[0].materialise()
        for use in self.uses[1:]:
            total = total + use.materialise()
        return total

    def squared_norms(self) -> torch.Tensor:
        """|g_i|² for this parameter, (b,) in float64."""
        if not self.uses:
            return torch.zeros(self.batch, dtype=torch.float64)
        if self.ghost_norms:
            total = torch.zeros(
                self.batch, dtype=torch.float64, device=self.factors[0].right.device
            )
            for x in self.factors:
                for y in self.factors:
                    total += ghost_self(x, y).double()
            return total
        return squared_norms(self.materialised())

    def dot(self, other: ParamBlock) -> torch.Tensor:
        """⟨g_i, g_j⟩ for this parameter, i in this chunk, j in ``other``: (b1, b2) float64."""
        if not self.uses or not other.uses:
            return torch.zeros(self.batch, other.batch, dtype=torch.float64)
        if self.ghost_pairs and other.factorable:
            total = ghost_cross(self.factors[0], other.factors[0]).double()
            for k, x in enumerate(self.factors):
                for m, y in enumerate(other.factors):
                    if k or m:
                        total += ghost_cross(x, y).double()
            return total
        return gram64(self.materialised(), other.materialised())

    def weighted_sum(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i g_i over ``rows`` for this parameter: (numel,)."""
        if self._dense is not None:
            return weights @ self._dense[rows]
        total = self.uses[0].weighted_sum(rows, weights)
        for use in self.uses[1:]:
            total = total + use.weighted_sum(rows, weights)
        return total

    def class_sums(self, groups: Groups) -> torch.Tensor:
        """Σ_{i in g} w_i g_i for every group g: (count, numel)."""
        if self._dense is not None:
            return groups.dense_sums(self._dense)
        total = self.uses[0].class_sums(groups)
        for use in self.uses[1:]:
            total = total + use.class_sums(groups)
        return total

    def zero_rows(self, mask: torch.Tensor) -> None:
        for use in self.uses:
            use.zero_rows(mask)
        if self._dense is not None:
            self._dense = zeroed(self._dense, mask)


class FactoredRows:
    """A chunk's per-example gradients, parameter by parameter in selection order."""

    def __init__(
        self, blocks: list[ParamBlock], batch: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.blocks, self.batch, self.device, self.dtype = blocks, batch, device, dtype
        starts = [0]
        for block in blocks:
            starts.append(starts[-1] + block.numel)
        self.columns = [slice(a, b) for a, b in itertools.pairwise(starts)]
        self.width = starts[-1]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch, self.width)

    def squared_norms64(self) -> torch.Tensor:
        """|g_i|², (b,) float64 on the host."""
        total = torch.zeros(self.batch, dtype=torch.float64, device=self.device)
        for block in self.blocks:
            total += block.squared_norms().to(self.device)
        return total.cpu()

    def dot64(self, other: FactoredRows) -> torch.Tensor:
        """g_i·g_j for i here, j in ``other``: (b1, b2) float64 on the host."""
        total = torch.zeros(self.batch, other.batch, dtype=torch.float64, device=self.device)
        for mine, theirs in zip(self.blocks, other.blocks, strict=True):
            total += mine.dot(theirs).to(self.device)
        return total.cpu()

    def add_class_sums(
        self, sums: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """sums[slot] += w_i g_i for each local row i (``slots``, ``rows``, ``weights``: (k,)).

        Per parameter, every slot present at once (``grouping``): an ``index_add_`` of
        materialised rows, or one batched product over the slots padded to equal size, or
        one product per slot when padding would cost more (with the probe ordered by
        class, as class mode orders it, a large chunk touches one or two slots).
        """
        groups = Groups(rows, weights, slots)
        for block, cols in zip(self.blocks, self.columns, strict=True):
            if block.uses:
                part = block.class_sums(groups)  # (count, numel), the rows' dtype
                if groups.span is not None:  # float64 += fp32 in one kernel, no copy
                    sums[groups.span, cols] += part
                else:
                    sums[:, cols].index_add_(0, groups.present, part.to(sums.dtype))

    def project(self, sums: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """g_i·sums[slots_i] for each row i: (b,) float64 on the host."""
        total = torch.zeros(self.batch, dtype=torch.float64, device=self.device)
        # A class-ordered chunk touches one or two slots: multiply every row with each of
        # them, (b, numel) x (count, numel) -> (b, count), and keep each row's own, rather
        # than gather sums[slots], a (b, numel) float64 copy per block.
        present, own = torch.unique(slots, return_inverse=True)  # (count,), (b,)
        rows = torch.arange(self.batch, device=self.device)
        own = own.to(self.device)
        for block, cols in zip(self.blocks, self.columns, strict=True):
            use = block.uses[0] if len(block.uses) == 1 else None
            if isinstance(use, Outer) and not block.cached:
                # ⟨L_iᵀR_i, S⟩ = Σ_t (L_it S)·R_it: (b·T, rows) @ (rows, cols) per slot, no
                # per-example gradient formed (a Linear's, b·in·out, is most of the cost).
                for k, target in enumerate(sums[present.to(sums.device), cols]):
                    moved = use.left @ target.view(use.rows, use.cols).to(use.left.dtype)
                    along = (moved * use.right).sum(dim=(1, 2), dtype=torch.float64)  # (b,)
                    total += torch.where(own == k, along, 0.0)
            elif block.uses:
                # One block's rows at a time, dropped after use: kept on every block they
                # would add up to the (b, P) matrix this backend exists to avoid.
                dense = block.transient_rows()
                targets = sums[present.to(sums.device), cols].to(dense.dtype)  # (count, numel)
                total += gram64(dense, targets)[rows, own]  # (b, count) -> (b,)
                del dense
        return total.cpu()

    def zero_rows(self, mask: torch.Tensor) -> None:
        for block in self.blocks:
            block.zero_rows(mask)

    def nbytes(self) -> int:
        """Bytes held for this chunk (captured factors and anything materialised)."""
        seen: dict[int, int] = {}
        for block in self.blocks:
            for use in block.uses:
                for value in vars(use).values():
                    if isinstance(value, torch.Tensor):
                        seen[id(value)] = value.numel() * value.element_size()
            if block._dense is not None:
                seen[id(block._dense)] = block._dense.numel() * block._dense.element_size()
        return sum(seen.values())
