"""The benchmark's data: disjoint splits, label noise on the training split only, and a probe
with a held-out half and a training half.

The probe's held-out (``val``) half is clean and drawn from neither training nor test; its
training (``train``) half is a fixed sample of the training examples *with the labels the
trainer used*, noise included (issue 15: the quantities Fort et al. tie to generalisation are
train-val and train-train stiffness, and only mislabelled training examples can show
memorisation). The test split, clean and large, is what the benchmark scores stops by; no rule
ever sees it. Both datasets come with scikit-learn (no download).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits, make_classification

NoiseKind = Literal["symmetric", "pair"]


@dataclass(frozen=True, eq=False)
class Splits:
    """Training (possibly noisy), probe (held-out clean + training noisy) and test tensors.

    ``probe_is_train`` marks the probe's training half; ``probe_mislabelled`` marks the probe
    examples whose label differs from the true one (only ever in the training half).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    noisy: int  # training labels replaced by a different class
    probe_is_train: torch.Tensor
    probe_mislabelled: torch.Tensor


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def corrupt(
    labels: np.ndarray, noise: float, kind: NoiseKind, classes: int, rng: np.random.Generator
) -> np.ndarray:
    """A ``noise`` share of labels made wrong: symmetric noise moves each to a *different*
    class drawn uniformly (so the share of wrong labels is ``noise``, not ``noise·(C-1)/C``);
    pair-flip (asymmetric) noise moves class c to c+1 mod C, the systematic confusion a tired
    annotator makes, which a model can learn as if it were signal."""
    noisy = labels.copy()
    flip = rng.random(len(noisy)) < noise
    if kind == "pair":
        noisy[flip] = (noisy[flip] + 1) % classes
    else:
        noisy[flip] = (noisy[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
    return noisy


def _split(
    x: np.ndarray,
    y: np.ndarray,
    probe_per_class: int,
    train_per_class: int,
    test: int,
    noise: float,
    kind: NoiseKind,
    seed: int,
) -> Splits:
    """Probe val: ``probe_per_class`` of each class; test: ``test`` of the rest; train: the
    rest, noisy; probe train: ``train_per_class`` training examples of each *used* label."""
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    order = rng.permutation(len(y))
    held = np.concatenate([order[y[order] == c][:probe_per_class] for c in range(classes)])
    rest = np.setdiff1d(order, held, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    test_idx, train_idx = rest[:test], rest[test:]
    train_y = corrupt(y[train_idx], noise, kind, classes, rng)
    picked = np.concatenate(
        [np.flatnonzero(train_y == c)[:train_per_class] for c in range(classes)]
    )
    probe_x = np.concatenate([x[train_idx[picked]], x[held]])
    probe_y = np.concatenate([train_y[picked], y[held]])
    true_y = np.concatenate([y[train_idx[picked]], y[held]])
    is_train = np.arange(len(probe_y)) < len(picked)
    return Splits(
        *_tensors(x[train_idx], train_y),
        *_tensors(probe_x, probe_y),
        *_tensors(x[test_idx], y[test_idx]),
        classes=classes,
        noisy=int((train_y != y[train_idx]).sum()),
        probe_is_train=torch.tensor(is_train),
        probe_mislabelled=torch.tensor(probe_y != true_y),
    )


def digits(noise: float, seed: int, kind: NoiseKind = "symmetric") -> Splits:
    """sklearn's 8×8 digits (1797 images): 40 per class held out, 400 test, ~1000 train (of
    which 75 per label go into the probe file's training half; the rarest label has 82 on
    seeds 0-2 at any noise; the benchmark's config samples 40 of them)."""
    data = load_digits()
    return _split(data.data / 16.0, data.target, 40, 75, 400, noise, kind, seed)


def overlap(noise: float, seed: int, kind: NoiseKind = "symmetric") -> Splits:
    """The harder task: ``make_classification`` with 10 overlapping classes (two clusters
    each, 30 features of which 10 informative, class_sep 1.5), standardised. 5,000 test
    examples, so a point of test accuracy is 50 examples, not digits' 4; 2,000 training, of
    which 100 per label go into the probe file's training half (the config samples 40)."""
    x, y = make_classification(
        n_samples=7400,
        n_features=30,
        n_informative=10,
        n_redundant=5,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.0,
        random_state=seed,
    )
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return _split(x, y, 40, 100, 5000, noise, kind, seed)
