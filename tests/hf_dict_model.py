"""A custom ``transformers.PreTrainedModel`` whose forward returns a plain dict, as people write
them for Hugging Face ``Trainer`` (which accepts ``{"loss": ..., "logits": ...}``).

Tests copy this file beside a config, which names ``build`` and ``probe`` as factories. The
model is built from a local config with random weights: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

FEATURES, CLASSES = 6, 3


class DictClassifierConfig(PretrainedConfig):
    model_type = "dict-classifier"

    def __init__(self, hidden: int = 16, classes: int = CLASSES, **kwargs: Any) -> None:
        self.hidden = hidden
        self.classes = classes
        super().__init__(**kwargs)


class DictClassifier(PreTrainedModel):
    """An MLP with a LayerNorm; ``forward`` returns ``{"logits"}`` and, given labels, a loss."""

    config_class = DictClassifierConfig

    def __init__(self, config: DictClassifierConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Sequential(
            nn.Linear(FEATURES, config.hidden), nn.LayerNorm(config.hidden), nn.Tanh()
        )
        self.head = nn.Linear(config.hidden, config.classes)
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.head(self.encoder(x))
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def build(hidden: int = 16) -> DictClassifier:
    """The ``model.factory``: a fresh model with random weights."""
    return DictClassifier(DictClassifierConfig(hidden=hidden))


def data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs: learnable in a few steps, so the weights really change."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 2.0
    targets = torch.arange(count) % CLASSES
    noise = torch.randn(count, FEATURES, generator=torch.Generator().manual_seed(100 + seed))
    inputs = centres[targets] + noise
    return inputs, targets


def probe(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``probe.factory``: held-out examples of the same blobs."""
    return data(60, seed)


def training_set(seed: int = 0) -> list[dict[str, Any]]:
    """The examples as ``Trainer`` takes them: a list of dicts the default collator stacks."""
    inputs, targets = data(96, seed)
    return [{"x": x, "labels": int(y)} for x, y in zip(inputs, targets, strict=True)]
