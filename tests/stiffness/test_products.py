"""Blocked float32 products and norms (monitor/stiffness/products.py) against float64."""

from __future__ import annotations

import pytest
import torch

from monitor.stiffness import products
from monitor.stiffness.products import BLOCK, gram64, squared_norms


def long_rows(rows: int, width: int, seed: int) -> torch.Tensor:
    """float32 rows sharing a common direction (positive products, the hard case for
    rounding: nothing cancels), in float64 first so the reference sees the same values."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(width, dtype=torch.float64, generator=generator)
    noise = torch.randn(rows, width, dtype=torch.float64, generator=generator)
    return (0.5 * shared + noise).float()


def relative(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    exact = a.double() @ b.double().T
    scale = a.double().norm(dim=1).unsqueeze(1) * b.double().norm(dim=1).unsqueeze(0)
    return float(((got - exact) / scale).abs().max())


def test_products_over_millions_of_columns_stay_float64_accurate() -> None:
    """Within a block float32 rounds as usual (up to ~3e-7 on these all-positive sums); over
    two million columns that does not grow (one float32 norm over a million was 1.2e-5 off,
    one sgemm over 2.4M columns 4.5e-6: the cosines need 1e-5)."""
    a = long_rows(4, 2**21 + 77, seed=0)  # full blocks and a tail
    b = long_rows(3, 2**21 + 77, seed=1)
    got = gram64(a, b)
    assert got.dtype == torch.float64 and got.shape == (4, 3)
    assert relative(got, a, b) < 1e-6
    norms = squared_norms(a)
    exact = a.double().square().sum(dim=1)
    assert float(((norms - exact) / exact).abs().max()) < 1e-6


@pytest.mark.parametrize("width", [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5])
def test_every_width_including_less_than_a_block(width: int) -> None:
    a, b = long_rows(3, width, seed=2), long_rows(4, width, seed=3)
    assert relative(gram64(a, b), a, b) < 1e-6
    exact = a.double().square().sum(dim=1)
    assert torch.allclose(squared_norms(a), exact, rtol=1e-6, atol=0)


def test_partial_products_are_taken_a_few_blocks_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many rows: the (blocks, m, n) partials are bounded by PARTIALS elements at a time
    (here lowered so that 4 × 4 rows over 3 blocks take two steps)."""
    monkeypatch.setattr(products, "PARTIALS", 2 * 4 * 4)
    a = long_rows(4, 3 * BLOCK, seed=4)
    assert relative(gram64(a, a), a, a) < 1e-6


def test_float64_and_mixed_rows_are_multiplied_in_float64() -> None:
    a = long_rows(3, 1000, seed=5).double()
    b = long_rows(2, 1000, seed=6)
    assert torch.equal(gram64(a, b), a @ b.double().T)
    assert torch.equal(squared_norms(a), a.square().sum(dim=1))
