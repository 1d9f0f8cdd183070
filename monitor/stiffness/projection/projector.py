"""A chunk's per-example gradients projected to (b, K), parameter by parameter.

Per selected parameter of n values, with ``dim`` k:

- n <= k: kept as it is (projecting it would save nothing and only add noise);
- an outer-product gradient G_i = Σ_t l_t r_tᵀ (Linear, Conv, Conv1D, Embedding: the uses'
  ``Factors``), or a dense row of a parameter with two or more dimensions viewed as
  (shape[0], n/shape[0]): with ``kind="kronecker"`` the projection
  P_out G_i P_inᵀ = Σ_t (P_out l_t)(P_in r_t)ᵀ, k_out·k_in <= k (``matrices.split``); with
  ``kind="khatri_rao"`` k coordinates a_jᵀ G_i b_j (``khatri_rao``); with
  ``kind="tensor_sketch"`` a k-bucket count sketch of G_i with hashed rows and columns
  (``tensor_sketch``); all three formed from the factors, never from G_i;
- anything else (a bias, a norm's scale, a fallback parameter's row): a dense Gaussian
  projection to k of its materialised row, or for ``tensor_sketch`` its count sketch (the
  row viewed as (shape[0], rest), so a weight's sketch is the same whichever way it came).

The same parameter gets the same projection whichever backend formed its gradient (the
factor layout of a weight is its (shape[0], rest) view), so the hook backend, vmap and the
loop agree up to rounding.

With ``total_dim`` w (by default 2^17), the per-parameter rows (K = Σ width values) are
folded into one row of w: a seeded count sketch of the K-vector (each projected coordinate
to one of w buckets with a random sign), summed part by part so (b, K) is never held. Each
parameter's buckets are seeded by its name, not its place in the row, so the fold of a
subset of the parameters is that subset's share of the whole fold (the parameter split sums
its ranks' folded rows into exactly the one-process row). It is unbiased like every stage
before it, and bounds a row at w whatever the number of parameters, so class sums take
O(C·w) and cached pair-mode rows O(N·w), at the cost of more collisions.
"""

from __future__ import annotations

import math

import torch

from monitor.stiffness.gradients import Rows
from monitor.stiffness.layers.rows import FactoredRows, ParamBlock
from monitor.stiffness.layers.uses import Factors
from monitor.stiffness.projection.khatri_rao import khatri_rao_dense, khatri_rao_outer
from monitor.stiffness.projection.matrices import Matrices, split
from monitor.stiffness.projection.tensor_sketch import Hashes, sketch_dense, sketch_outer


class Projector:
    """Projects chunks of one evaluation; ``shapes`` are the selected parameters', in order."""

    def __init__(
        self,
        dim: int,
        seed: int,
        shapes: dict[str, tuple[int, ...]],
        device: torch.device,
        dtype: torch.dtype,
        kind: str = "tensor_sketch",
        total_dim: int | None = None,
        fold_always: bool = False,
    ) -> None:
        self.dim, self.shapes, self.kind = dim, shapes, kind
        self.matrices = Matrices(seed, device, dtype)
        folds = total_dim is not None and (fold_always or self.unfolded > total_dim)
        self.fold: int | None = total_dim if folds else None

    def width(self, name: str) -> int:
        """The projected width of one parameter."""
        shape = self.shapes[name]
        n = math.prod(shape)
        if n <= self.dim:
            return n
        if len(shape) >= 2 and self.kind == "kronecker":
            k_out, k_in = split(shape[0], n // shape[0], self.dim)
            return k_out * k_in
        return self.dim

    @property
    def unfolded(self) -> int:
        """K: the width of the per-parameter rows, before any fold."""
        return sum(self.width(name) for name in self.shapes)

    def fold_hashes(self, name: str) -> Hashes:
        """The fold's buckets (``in_index``) and signs (``in_sign``) of one parameter's
        projected coordinates, seeded by its name and width."""
        assert self.fold is not None, "only a folded projection has fold hashes"
        return self.matrices.hashes(f"{name}|fold", (1, self.width(name)), self.fold)

    def rows(self, grads: Rows) -> torch.Tensor:
        """(b, K) projected rows of a (b, P) matrix or of factored rows; (b, ``fold``) when
        folded."""
        if isinstance(grads, FactoredRows):
            parts = ((block.name, self.block(block)) for block in grads.blocks)
        else:
            parts = (
                (name, self.dense(name, grads[:, start : start + math.prod(shape)]))
                for name, shape, start in self._spans()
            )
        if self.fold is None:
            return torch.cat([part for _, part in parts], dim=1)
        out: torch.Tensor | None = None
        for name, part in parts:  # each part folded as it comes: (b, K) is never held
            hashes = self.fold_hashes(name)
            if out is None:
                out = part.new_zeros(part.shape[0], self.fold)
            out.index_add_(-1, hashes.in_index, part * hashes.in_sign.to(part.dtype))
        assert out is not None, "a projection has at least one parameter"
        return out

    def _spans(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(name, shape, first column) of each selected parameter in a (b, P) row."""
        spans, start = [], 0
        for name, shape in self.shapes.items():
            spans.append((name, shape, start))
            start += math.prod(shape)
        return spans

    def block(self, block: ParamBlock) -> torch.Tensor:
        """One parameter's projected rows from the hook backend's uses: from their factors
        (L, R) when every use has them for the weight's (shape[0], rest) layout."""
        shape = self.shapes[block.name]
        if not block.uses:
            return torch.zeros(block.batch, self.width(block.name), device=self.matrices.device)
        if len(shape) >= 2 and block.numel > self.dim and block.factorable:
            found = block.factors
            if len(found) == len(block.uses) and all(f.rows == shape[0] for f in found):
                total = self.outer(block.name, found[0])
                for factors in found[1:]:
                    total = total + self.outer(block.name, factors)
                return total
        return self.dense(block.name, block.transient_rows())

    def _factors(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        shape = self.shapes[name]
        rows, cols = shape[0], math.prod(shape) // shape[0]
        k_out, k_in = split(rows, cols, self.dim)
        return (
            self.matrices.factor(name, rows, cols, k_out, "out"),
            self.matrices.factor(name, rows, cols, k_in, "in"),
        )

    def outer(self, name: str, factors: Factors) -> torch.Tensor:
        """Σ_t (P_out l_t)(P_in r_t)ᵀ flattened: (b, k_out·k_in), from G = Lᵀ R."""
        if self.kind == "tensor_sketch":
            return sketch_outer(self.matrices.hashes(name, self.shapes[name], self.dim), factors)
        if self.kind == "khatri_rao":
            return khatri_rao_outer(
                self.matrices.rowwise(name, self.shapes[name], self.dim), factors
            )
        p_out, p_in = self._factors(name)
        right = factors.right if p_in is None else factors.right @ p_in.T  # (b, T, k_in)
        left = factors.left
        if factors.one_hot:  # l_t = onehot(token): P_out l_t is a column of P_out
            if p_out is None:
                left = torch.nn.functional.one_hot(left, factors.rows).to(right.dtype)
            else:
                left = p_out.T[left]  # (b, T, k_out)
        elif p_out is not None:
            left = left @ p_out.T  # (b, T, k_out)
        # (b, k_out, T) @ (b, T, k_in) -> (b, k_out, k_in)
        return torch.bmm(left.transpose(1, 2), right).reshape(right.shape[0], -1)

    def dense(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """One parameter's materialised rows (b, n) projected: (b, width)."""
        shape = self.shapes[name]
        n = int(values.shape[1])
        if n <= self.dim:
            return values
        if self.kind == "tensor_sketch":
            return sketch_dense(self.matrices.hashes(name, shape, self.dim), values)
        if len(shape) >= 2 and self.kind == "khatri_rao":
            return khatri_rao_dense(self.matrices.rowwise(name, shape, self.dim), values)
        if len(shape) >= 2:
            p_out, p_in = self._factors(name)
            g = values.reshape(values.shape[0], shape[0], n // shape[0])  # (b, rows, cols)
            if p_out is not None:
                g = torch.matmul(p_out, g)  # (k_out, rows) @ (b, rows, cols)
            if p_in is not None:
                g = torch.matmul(g, p_in.T)  # (b, k_out, cols) @ (cols, k_in)
            return g.reshape(values.shape[0], -1)
        return self.matrices.dense(name, values, self.dim)


def unfolded_width(dim: int, kind: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """K, the width of the per-parameter rows of these parameters before any fold (nothing
    is drawn: widths depend on the shapes only)."""
    return Projector(dim, 0, shapes, torch.device("cpu"), torch.float32, kind).unfolded
