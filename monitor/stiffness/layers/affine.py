"""What every normalisation layer shares: y = x̂ ⊙ γ + β with x̂ independent of γ and β.

Per example, dγ = Σ_positions x̂ ⊙ b and dβ = Σ_positions b: sums over positions, cheap to
materialise (``Dense``, one value per affine weight). The layer rules only differ in how
they recompute x̂ from the captured input.
"""

from __future__ import annotations

import torch
from torch import nn

from monitor.stiffness.layers.uses import Dense, Use


def affine_uses(
    module: nn.Module, normalised: torch.Tensor, grad: torch.Tensor, feature_dims: int
) -> dict[str, Use]:
    """Uses of ``module.weight``/``module.bias`` (either may be None).

    ``normalised`` and ``grad`` are (b, ...) in the compute dtype. ``feature_dims`` > 0:
    the trailing dims the affine weight spans (LayerNorm, RMSNorm); 0: the weight spans
    dim 1, the channels (BatchNorm, GroupNorm).
    """
    batch = grad.shape[0]
    if feature_dims > 0:
        shape = grad.shape[grad.dim() - feature_dims :]
        features = int(torch.Size(shape).numel())
        x = normalised.reshape(batch, -1, features)  # (b, T, features)
        g = grad.reshape(batch, -1, features)
    else:
        channels = grad.shape[1]
        x = normalised.reshape(batch, channels, -1).transpose(1, 2)  # (b, T, C)
        g = grad.reshape(batch, channels, -1).transpose(1, 2)
    uses: dict[str, Use] = {}
    if getattr(module, "weight", None) is not None:
        uses["weight"] = Dense((x * g).sum(dim=1))  # (b, features)
    if getattr(module, "bias", None) is not None:
        uses["bias"] = Dense(g.sum(dim=1))
    return uses
