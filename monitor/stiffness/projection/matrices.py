"""Seeded random projection matrices, the same in every process and at every checkpoint.

Each matrix is drawn from a ``torch.Generator`` on the compute device, seeded from the
configured seed, the parameter's name, the shape it projects and which side it is (a
SHA-256 of the four), so a checkpoint evaluated today and one evaluated next week, in
another process, see the same projection and their stiffness values are comparable. (The
CPU and CUDA generators draw different numbers: runs compared with each other should use
one device type.)

Entries are N(0, 1/k): for a (k, d) matrix M, E[MᵀM] = I, so E[⟨Mu, Mv⟩] = ⟨u, v⟩ and the
projected inner products are unbiased. For the Kronecker form P_out ⊗ P_in with independent
factors, E[(P_out ⊗ P_in)ᵀ(P_out ⊗ P_in)] = E[P_outᵀP_out] ⊗ E[P_inᵀP_in] = I as well.
"""

from __future__ import annotations

import hashlib
import math

import torch

from monitor.stiffness.projection.tensor_sketch import Hashes

#: Columns per separately seeded block of a dense projection: a (k, d) matrix for a large
#: parameter is never held whole, only (k, BLOCK) at a time.
BLOCK = 2**16


def seed_for(seed: int, name: str, shape: tuple[int, ...], side: str) -> int:
    """A 63-bit generator seed from the configured seed, the parameter and the side."""
    text = f"{seed}|{name}|{'x'.join(map(str, shape))}|{side}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def gaussian(
    rows: int, cols: int, seed: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A (rows, cols) matrix of N(0, 1/rows) entries from generator seed ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    drawn = torch.randn(rows, cols, generator=generator, device=device, dtype=torch.float32)
    return (drawn / math.sqrt(rows)).to(dtype)


def split(rows: int, cols: int, dim: int) -> tuple[int, int]:
    """(k_out, k_in) with k_out·k_in <= dim for a (rows, cols) gradient, as square as the
    shape allows: a side no wider than its share is kept whole (its factor is the identity)."""
    k_out = min(rows, math.isqrt(dim))
    k_in = min(cols, dim // k_out)
    if k_in == cols:  # the input side fits whole: give the rest to the output side
        k_out = min(rows, dim // cols)
    return k_out, k_in


class Matrices:
    """The projection matrices of one evaluation, drawn on first use and kept (small ones)."""

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype) -> None:
        self.seed, self.device, self.dtype = seed, device, dtype
        self._kept: dict[tuple[str, tuple[int, ...], str], torch.Tensor] = {}
        self._kept_hashes: dict[tuple[str, tuple[int, ...], str], Hashes] = {}

    def factor(self, name: str, rows: int, cols: int, k: int, side: str) -> torch.Tensor | None:
        """P_out (k, rows) for side "out", P_in (k, cols) for side "in"; None (the identity)
        when k is the whole side."""
        width = rows if side == "out" else cols
        if k >= width:
            return None
        key = (name, (rows, cols, k), side)
        if key not in self._kept:
            seed = seed_for(self.seed, name, (rows, cols, k), side)
            self._kept[key] = gaussian(k, width, seed, self.device, self.dtype)
        return self._kept[key]

    def rowwise(
        self, name: str, shape: tuple[int, ...], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A (k, rows) and B (k, cols) for the row-wise Kronecker (Khatri-Rao) projection of
        a (rows, cols) gradient: entries N(0, 1/√k) each, so that the rows a_j ⊗ b_j of the
        projection have entries of variance 1/k, as a dense N(0, 1/k) matrix has."""
        rows, cols = shape[0], math.prod(shape) // shape[0]
        key = (name, (rows, cols, k), "rowwise")
        if key not in self._kept:
            scale = math.sqrt(math.sqrt(k))
            pair = [
                gaussian(k, width, seed_for(self.seed, name, (rows, cols, k), side), self.device,
                         self.dtype) * scale
                for width, side in ((rows, "row-out"), (cols, "row-in"))
            ]  # fmt: skip
            self._kept[key] = torch.cat(pair, dim=1)  # (k, rows + cols)
        both = self._kept[key]
        return both[:, :rows], both[:, rows:]

    def hashes(self, name: str, shape: tuple[int, ...], k: int) -> Hashes:
        """The TensorSketch buckets and signs of a (rows, cols) view of ``shape``
        (``tensor_sketch``): uniform buckets in [0, k) and signs ±1 per row and per column."""
        rows, cols = shape[0], math.prod(shape) // shape[0]
        key = (name, (rows, cols, k), "sketch")
        if key not in self._kept_hashes:
            drawn = []
            for width, side in ((rows, "sketch-out"), (cols, "sketch-in")):
                generator = torch.Generator(device=self.device)
                generator.manual_seed(seed_for(self.seed, name, (rows, cols, k), side))
                index = torch.randint(0, k, (width,), generator=generator, device=self.device)
                bits = torch.randint(0, 2, (width,), generator=generator, device=self.device)
                drawn += [index, (2 * bits - 1).to(self.dtype)]
            self._kept_hashes[key] = Hashes(drawn[0], drawn[1], drawn[2], drawn[3], k)
        return self._kept_hashes[key]

    def dense(self, name: str, values: torch.Tensor, k: int) -> torch.Tensor:
        """values (b, d) @ Mᵀ for a (k, d) Gaussian M drawn block by block: (b, k)."""
        d = int(values.shape[1])
        out = values.new_zeros(values.shape[0], k)
        for index, begin in enumerate(range(0, d, BLOCK)):
            end = min(d, begin + BLOCK)
            seed = seed_for(self.seed, name, (d, k, index), "dense")
            key = (name, (d, k, index), "dense")
            block = self._kept.get(key)
            if block is None:
                block = gaussian(k, end - begin, seed, self.device, self.dtype)
                if k * (end - begin) <= 2**22:  # small: keep it for the next chunk
                    self._kept[key] = block
            out += values[:, begin:end] @ block.T  # (b, d') @ (d', k) -> (b, k)
        return out
