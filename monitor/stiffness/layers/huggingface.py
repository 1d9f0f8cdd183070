"""Layers of Hugging Face ``transformers`` that are not ``torch.nn`` classes, by name.

The engine imports nothing but torch, so these rules register by qualified class name
(``registry.register_named``); the setup check still compares them with autograd.

- ``Conv1D`` (GPT-2's attention and MLP projections) is a transposed Linear: y_t = a_t W + c
  with W (in, out), so G_W = Σ_t a_t b_tᵀ = Aᵀ B, the ``Outer`` form with L = A, R = B
  (Linear's, with the factors swapped to match the weight's layout).
- The RMSNorm of Llama and the models that copy it (same code: normalise in float32, cast
  back to the input dtype, then scale by the weight): dγ = Σ_t x̂_t ⊙ b_t.
"""

from __future__ import annotations

from typing import Any

import torch

from monitor.stiffness.layers.affine import affine_uses
from monitor.stiffness.layers.registry import flat_positions, register_named
from monitor.stiffness.layers.uses import Dense, Outer, Use

_MODELS = "transformers.models"
RMS_NORMS = tuple(
    f"{_MODELS}.{package}.modeling_{package}.{name}RMSNorm"
    for package, name in (
        ("llama", "Llama"),
        ("mistral", "Mistral"),
        ("qwen2", "Qwen2"),
        ("qwen3", "Qwen3"),
        ("phi3", "Phi3"),
        ("smollm3", "SmolLM3"),
    )
)


@register_named("transformers.pytorch_utils.Conv1D")
def conv1d(
    module: Any, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    a = flat_positions(inputs[0], int(module.nx), dtype)  # (b, T, in)
    b = flat_positions(grad, int(module.nf), dtype)  # (b, T, out)
    return {"weight": Outer(a, b), "bias": Dense(b.sum(dim=1))}  # (in, out) rows; (b, out)


@register_named(*RMS_NORMS)
def llama_rms_norm(
    module: Any, inputs: tuple[Any, ...], grad: torch.Tensor, dtype: torch.dtype
) -> dict[str, Use]:
    x = inputs[0]
    wide = x.to(torch.float32)  # as the module does, whatever the model's dtype
    variance = wide.pow(2).mean(-1, keepdim=True)
    normalised = (wide * torch.rsqrt(variance + module.variance_epsilon)).to(x.dtype)
    return affine_uses(module, normalised.to(dtype), grad.to(dtype), feature_dims=1)
