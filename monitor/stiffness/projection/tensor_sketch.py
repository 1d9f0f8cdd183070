"""TensorSketch (Pham and Pagh, 2013) of an outer-product gradient, from its factors.

A count sketch sends coordinate (i, j) of a (rows, cols) gradient G to bucket
h(i, j) = (h_out(i) + h_in(j)) mod k with sign s_out(i)·s_in(j), for seeded hashes h_out,
h_in into [0, k) and random signs. For G = Σ_t l_t r_tᵀ that sketch is a sum over positions
of circular convolutions, CS_out(l_t) ⊛ CS_in(r_t), so it is formed in the Fourier domain:
irfft(Σ_t rfft(CS_out(l_t)) · rfft(CS_in(r_t))). Its inner products are unbiased
(E[s(i)s(i')] = 0 unless i = i'), like a dense Gaussian projection's.

Why it exists beside the row-wise Kronecker form (``khatri_rao``): that form projects both
factors to k columns with dense matrices, T·k·(rows + cols) multiply-adds per example and
layer, which is more than the layer's own backward pass for k = 4096 on GPT-2-sized layers.
Here the count sketches cost T·(rows + cols) additions and the transforms T·k·log k, so the
cost hardly depends on the layer's width (bench/projection_speed.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.stiffness.layers.uses import Factors

#: Most (b, t, k) sketch values formed at once; longer sequences are taken in slices of t.
SLICE_VALUES = 2**24


@dataclass(frozen=True)
class Hashes:
    """The seeded buckets and signs of one (rows, cols) gradient's two sides, into k buckets."""

    out_index: torch.Tensor  # (rows,) int64 in [0, k)
    out_sign: torch.Tensor  # (rows,) ±1
    in_index: torch.Tensor  # (cols,) int64 in [0, k)
    in_sign: torch.Tensor  # (cols,) ±1
    k: int


def count_sketch(
    values: torch.Tensor, index: torch.Tensor, sign: torch.Tensor, k: int
) -> torch.Tensor:
    """(..., d) values summed into (..., k) buckets ``index`` with signs ``sign``."""
    out = values.new_zeros(*values.shape[:-1], k)
    return out.index_add_(-1, index, values * sign)


def sketch_outer(hashes: Hashes, factors: Factors) -> torch.Tensor:
    """(b, k): the count sketch of each example's G = Lᵀ R, from its factors, never formed."""
    k, right_all = hashes.k, factors.right
    b, steps = int(right_all.shape[0]), int(right_all.shape[1])
    spectrum: torch.Tensor | None = None
    width = max(1, SLICE_VALUES // max(1, b * k))
    for begin in range(0, steps, width):
        end = min(steps, begin + width)
        right = count_sketch(right_all[:, begin:end], hashes.in_index, hashes.in_sign, k)
        if factors.one_hot:  # l_t = onehot(token): its sketch is one signed bucket
            ids = factors.left[:, begin:end]
            left = right.new_zeros(right.shape)
            sign = hashes.out_sign[ids].to(right.dtype).unsqueeze(-1)
            left.scatter_(-1, hashes.out_index[ids].unsqueeze(-1), sign)
        else:
            left = count_sketch(factors.left[:, begin:end], hashes.out_index, hashes.out_sign, k)
        part = (torch.fft.rfft(left, dim=-1) * torch.fft.rfft(right, dim=-1)).sum(dim=1)
        spectrum = part if spectrum is None else spectrum + part
    if spectrum is None:  # no positions: a zero gradient
        return right_all.new_zeros(b, k)
    sketch: torch.Tensor = torch.fft.irfft(spectrum, n=k, dim=-1)
    return sketch


def sketch_dense(hashes: Hashes, values: torch.Tensor) -> torch.Tensor:
    """(b, k): the same sketch of materialised rows (b, rows·cols), bucket by bucket."""
    k = hashes.k
    index = (hashes.out_index.unsqueeze(1) + hashes.in_index.unsqueeze(0)) % k
    sign = hashes.out_sign.unsqueeze(1) * hashes.in_sign.unsqueeze(0)
    return count_sketch(values, index.reshape(-1), sign.reshape(-1).to(values.dtype), k)
