"""The scenario suite: which training runs the benchmark makes, and why these.

Round two (issue 15). Two tasks:

- ``overlap``: a harder synthetic task (10 overlapping classes, 2,000 training examples, a
  5,000-example test split, so a point of test accuracy is 50 examples); an MLP with two
  hidden layers of 256. The full factorial: label noise none / symmetric 20 and 40 % /
  pair-flip 20 and 40 %, SGD with momentum and Adam, a high and a low learning rate
  (20 runs per seed).
- ``digits``: sklearn's digits, the MLP and the small CNN, noise none / symmetric 40 % /
  pair-flip 40 %, both optimizers and both learning rates (24 runs per seed): the task of
  round one, kept so the two rounds can be compared, though its 400-example test split
  makes a point 4 examples.

Seeds change the split, the label noise, the initialisation and the batch order. Rules are
designed on the selection seed and reported on the held-out seeds once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from bench.signal_quality.data import NoiseKind

Task = Literal["digits", "overlap"]
Optimizer = Literal["sgd", "adam"]
Arch = Literal["mlp", "cnn"]
Level = Literal["high", "low"]

#: Learning rates: SGD has momentum 0.9; "high" is a usual fast setting, "low" is 10x slower.
LEARNING_RATES: dict[tuple[Optimizer, Level], float] = {
    ("sgd", "high"): 0.1,
    ("sgd", "low"): 0.01,
    ("adam", "high"): 3e-3,
    ("adam", "low"): 3e-4,
}
#: Epochs: long enough that every run is well past its best test accuracy (checked in the
#: table: the oracle's savings column is the share of each run after its best checkpoint).
EPOCHS: dict[Level, int] = {"high": 40, "low": 60}
SELECTION_SEEDS = (0,)
HELD_OUT_SEEDS = (1, 2)
#: (share, kind): none, symmetric and pair-flip noise.
OVERLAP_NOISES: tuple[tuple[float, NoiseKind], ...] = (
    (0.0, "symmetric"),
    (0.2, "symmetric"),
    (0.4, "symmetric"),
    (0.2, "pair"),
    (0.4, "pair"),
)
DIGITS_NOISES: tuple[tuple[float, NoiseKind], ...] = (
    (0.0, "symmetric"),
    (0.4, "symmetric"),
    (0.4, "pair"),
)
ARCHS: tuple[Arch, ...] = ("mlp", "cnn")
OPTIMIZERS: tuple[Optimizer, ...] = ("sgd", "adam")
LEVELS: tuple[Level, ...] = ("high", "low")


@dataclass(frozen=True)
class Scenario:
    """One seeded training run; ``name`` is its cache file's stem."""

    task: Task
    noise: float
    optimizer: Optimizer
    lr_level: Level
    arch: Arch
    seed: int
    noise_kind: NoiseKind = "symmetric"
    batch_size: int = 32

    @property
    def lr(self) -> float:
        return LEARNING_RATES[(self.optimizer, self.lr_level)]

    @property
    def epochs(self) -> int:
        return EPOCHS[self.lr_level]

    @property
    def noise_label(self) -> str:
        """``clean``, ``sym20`` or ``pair40``: the noise as the tables print it."""
        if self.noise == 0.0:
            return "clean"
        return f"{'pair' if self.noise_kind == 'pair' else 'sym'}{round(self.noise * 100):02d}"

    @property
    def name(self) -> str:
        return (
            f"{self.task}-{self.arch}-{self.optimizer}-{self.lr_level}-"
            f"{self.noise_label}-seed{self.seed}"
        )

    @property
    def healthy(self) -> bool:
        """No label noise: a stop before the best checkpoint is a plain early stop."""
        return self.noise == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr": self.lr, "epochs": self.epochs, "name": self.name,
                "noise_label": self.noise_label}  # fmt: skip


def suite(seeds: tuple[int, ...] = SELECTION_SEEDS + HELD_OUT_SEEDS) -> list[Scenario]:
    """Every scenario of the benchmark for ``seeds``, in a fixed order."""
    runs: list[Scenario] = []
    for seed in seeds:
        for noise, kind in OVERLAP_NOISES:
            for optimizer in OPTIMIZERS:
                for level in LEVELS:
                    runs.append(Scenario("overlap", noise, optimizer, level, "mlp", seed, kind))
        for noise, kind in DIGITS_NOISES:
            for arch in ARCHS:
                for optimizer in OPTIMIZERS:
                    for level in LEVELS:
                        runs.append(Scenario("digits", noise, optimizer, level, arch, seed, kind))
    return runs
