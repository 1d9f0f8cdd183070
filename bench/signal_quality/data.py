"""The benchmark's data: three disjoint splits and label noise on the training split only.

Every rule sees only the probe (clean, held out); the test split, also clean, is what the
benchmark scores stops by, and no rule ever sees it. Both datasets come with scikit-learn
(no download).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits, make_classification


@dataclass(frozen=True, eq=False)
class Splits:
    """Training (possibly noisy), probe (clean) and test (clean) tensors of one task."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    noisy: int  # training labels replaced by a different class


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def _split(
    x: np.ndarray, y: np.ndarray, probe_per_class: int, test: int, noise: float, seed: int
) -> Splits:
    """Probe: ``probe_per_class`` of each class; test: ``test`` of the rest; train: the rest.

    Noise replaces a ``noise`` share of training labels by a *different* class drawn uniformly,
    so a noise level means that share of labels is wrong (not ``noise × (C-1)/C``).
    """
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    order = rng.permutation(len(y))
    probe = np.concatenate([order[y[order] == c][:probe_per_class] for c in range(classes)])
    rest = np.setdiff1d(order, probe, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    test_idx, train_idx = rest[:test], rest[test:]
    train_y = y[train_idx].copy()
    flip = rng.random(len(train_y)) < noise
    train_y[flip] = (train_y[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
    train = _tensors(x[train_idx], train_y)
    probe_t = _tensors(x[probe], y[probe])
    test_t = _tensors(x[test_idx], y[test_idx])
    return Splits(*train, *probe_t, *test_t, classes=classes, noisy=int(flip.sum()))


def digits(noise: float, seed: int) -> Splits:
    """sklearn's 8×8 digits (1797 images): 40 per class probe, 400 test, ~1000 train."""
    data = load_digits()
    return _split(data.data / 16.0, data.target, 40, 400, noise, seed)


def synthetic(noise: float, seed: int, classes: int = 20) -> Splits:
    """``make_classification``: 20 classes, 40 features (20 informative), standardised."""
    x, y = make_classification(
        n_samples=4200,
        n_features=40,
        n_informative=20,
        n_redundant=5,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return _split(x, y, 25, 1200, noise, seed)
