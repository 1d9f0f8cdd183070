"""The example's model factory: a small MLP for 8x8 digits."""

from __future__ import annotations

from torch import nn


def build_mlp(hidden: int = 64, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
