"""GroupNorm: x̂ normalised per example over each group of channels and all positions.

Per-example statistics only (never across the batch), so eval and train mode agree and the
affine gradients are per-channel sums over positions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness.layers.affine import affine_uses
from monitor.stiffness.layers.registry import register
from monitor.stiffness.layers.uses import Use


@register(nn.GroupNorm)
def group_norm(
    module: nn.GroupNorm, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    x = F.group_norm(inputs[0].to(dtype), module.num_groups, None, None, module.eps)
    return affine_uses(module, x, grad.to(dtype), feature_dims=0)
