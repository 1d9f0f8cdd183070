"""Model factories the benchmark trains, named in its monitor config (``module:function``).

The ``Evaluator`` builds them by name exactly as it builds a user's model, so the benchmark
goes through the product's factory and checkpoint-loading path.
"""

from __future__ import annotations

from torch import nn


def build_mlp(inputs: int = 64, classes: int = 10, hidden: int = 128) -> nn.Module:
    """Two hidden ReLU layers: wide enough to memorise noisy labels on these tasks."""
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def build_cnn(classes: int = 10, channels: int = 16) -> nn.Module:
    """A small CNN for 8×8 digits (flat 64-vectors in, reshaped to one channel)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 16, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )
