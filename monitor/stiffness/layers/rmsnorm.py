"""RMSNorm: x̂ = x / sqrt(mean(x²) + eps) over the trailing ``normalized_shape`` dims.

Only a weight (no bias). ``eps=None`` means torch's default (the dtype's machine epsilon),
which ``F.rms_norm`` applies the same way when given None.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness.layers.affine import affine_uses
from monitor.stiffness.layers.registry import register
from monitor.stiffness.layers.uses import Use


@register(nn.RMSNorm)
def rms_norm(
    module: nn.RMSNorm, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    shape = tuple(module.normalized_shape)
    x = F.rms_norm(inputs[0].to(dtype), shape, None, module.eps)
    return affine_uses(module, x, grad.to(dtype), feature_dims=len(shape))
