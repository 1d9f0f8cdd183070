"""The row-wise Kronecker (Khatri-Rao) projection of an outer-product gradient.

Coordinate j of the projected G = Σ_t l_t r_tᵀ is a_jᵀ G b_j = Σ_t (a_j·l_t)(b_j·r_t), for
Gaussian rows a_j (rows,) and b_j (cols,) with entries N(0, 1/√k): each coordinate is the
inner product of vec(G) with a_j ⊗ b_j, whose entries have mean 0 and variance 1/k, so the
projection is unbiased like a dense one (E[(a⊗b)(a⊗b)ᵀ] = E[aaᵀ] ⊗ E[bbᵀ] = I/k).

Why it exists beside the Kronecker form P_out G P_inᵀ (LoGra): for a per-example gradient
close to rank one (one position, or positions that agree: T = 1 layers, a CNN's last
blocks) the Kronecker form's norm error is that of two projections of k_out = k_in = √k
dimensions, relative variance about 4/√k, so its error falls as k^(-1/4); the row-wise
form's relative variance is at most about 8/k, falling as k^(-1/2) (docs/precision.md
measures both). It costs more: projecting the factors to k columns each, not √k.
"""

from __future__ import annotations

import torch

from monitor.stiffness.layers.uses import Factors


def khatri_rao_outer(pair: tuple[torch.Tensor, torch.Tensor], factors: Factors) -> torch.Tensor:
    """(b, k) from the factors of G = Lᵀ R (one-hot L for an embedding's token ids)."""
    a, b = pair  # (k, rows), (k, cols)
    right = factors.right @ b.T  # (b, T, cols) @ (cols, k) -> (b, T, k)
    left = a.T[factors.left] if factors.one_hot else factors.left @ a.T  # (b, T, k)
    return (left * right).sum(dim=1)


def khatri_rao_dense(pair: tuple[torch.Tensor, torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    """(b, k) from materialised rows (b, rows·cols) of a (rows, cols) gradient."""
    a, b = pair
    g = values.reshape(values.shape[0], a.shape[1], b.shape[1])  # (b, rows, cols)
    return ((g @ b.T) * a.T).sum(dim=1)  # (b, rows, k) · (rows, k) summed over rows
