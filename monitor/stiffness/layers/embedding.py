"""Embedding: row lookups, G_i = Σ_t onehot(token_it) ⊗ b_it.

Kept sparse (``Tokens``): the ghost Gram compares token ids, [tok_it = tok_js](b_it·b_js),
and class sums scatter rows with ``index_add_``. ``padding_idx`` rows get no gradient (as
in torch's backward). Declined, so they fall back to ``torch.func``: ``max_norm`` (the
forward rewrites the weight) and ``scale_grad_by_freq`` (the scale depends on the batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monitor.stiffness.layers.registry import flat_positions, register
from monitor.stiffness.layers.uses import Tokens, Use


def _supported(module: nn.Embedding) -> bool:
    return module.max_norm is None and not module.scale_grad_by_freq


@register(nn.Embedding, when=_supported)
def embedding(
    module: nn.Embedding, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    index = inputs[0].reshape(inputs[0].shape[0], -1)  # (b, T) token ids
    b = flat_positions(grad, module.embedding_dim, dtype)  # (b, T, d)
    if module.padding_idx is not None:
        b = b * (index != module.padding_idx).unsqueeze(2).to(dtype)
    return {"weight": Tokens(index, b, module.num_embeddings)}
