"""The digits data used by the example: scikit-learn's bundled 8x8 digits (no download).

The trainer and the monitor split it the same way (fixed seed), so the probe set the monitor
measures on is held out from training.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

HELD_OUT = 600  # examples kept out of training; the probe samples from these


def _split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    targets = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    return inputs[train], targets[train], inputs[held], targets[held]


def training_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets, _, _ = _split(seed)
    return inputs, targets


def probe(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe factory named in config.yaml: held-out digits as (inputs, targets)."""
    _, _, inputs, targets = _split(seed)
    return inputs, targets
