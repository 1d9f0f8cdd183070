"""Linear, with any leading dimensions: y_t = W a_t + c at each position t.

Per example, G_W = Σ_t b_t a_tᵀ = Bᵀ A (B: (T, out), A: (T, in)), the ``Outer`` form with
L = B and R = A; for T = 1 the ghost Gram is (a_i·a_j)(b_i·b_j) (DESIGN §3). The bias
gradient is Σ_t b_t, materialised: out values per example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monitor.stiffness.layers.registry import flat_positions, register
from monitor.stiffness.layers.uses import Dense, Outer, Use


@register(nn.Linear)
def linear(
    module: nn.Linear, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    a = flat_positions(inputs[0], module.in_features, dtype)  # (b, T, in)
    b = flat_positions(grad, module.out_features, dtype)  # (b, T, out)
    uses: dict[str, Use] = {"weight": Outer(b, a)}
    if module.bias is not None:
        uses["bias"] = Dense(b.sum(dim=1))  # (b, out)
    return uses
