"""LayerNorm: x̂ normalised over the trailing ``normalized_shape`` dims, per position."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness.layers.affine import affine_uses
from monitor.stiffness.layers.registry import register
from monitor.stiffness.layers.uses import Use


@register(nn.LayerNorm)
def layer_norm(
    module: nn.LayerNorm, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    shape = tuple(module.normalized_shape)
    x = F.layer_norm(inputs[0].to(dtype), shape, None, None, module.eps)
    return affine_uses(module, x, grad.to(dtype), feature_dims=len(shape))
