"""BatchNorm in eval mode: x̂ = (x - running_mean) / sqrt(running_var + eps) per channel.

Only with running statistics: the engine runs the model in eval mode, where those are used
and examples do not interact. A BatchNorm without running statistics
(``track_running_stats=False``) normalises by the batch even in eval mode, which couples
examples; it is declined and falls back to ``torch.func`` (which sees one example at a time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monitor.stiffness.layers.affine import affine_uses
from monitor.stiffness.layers.registry import register
from monitor.stiffness.layers.uses import Use


def _supported(module: nn.modules.batchnorm._BatchNorm) -> bool:
    return module.running_mean is not None and module.running_var is not None


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, when=_supported)
def batch_norm(
    module: nn.modules.batchnorm._BatchNorm,
    inputs: tuple[Any, ...],
    grad: torch.Tensor,
    dtype: torch.dtype,
) -> dict[str, Use]:
    assert module.running_mean is not None and module.running_var is not None
    x = inputs[0].to(dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast per channel, dim 1
    mean = module.running_mean.to(dtype).view(shape)
    scale = torch.rsqrt(module.running_var.to(dtype) + module.eps).view(shape)
    return affine_uses(module, (x - mean) * scale, grad.to(dtype), feature_dims=0)
