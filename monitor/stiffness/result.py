"""The engine's output: small frozen values that serialise to the JSON contract and back.

One ``StiffnessResult`` per evaluation. ``to_dict`` gives the ``evaluate --json`` object
(DESIGN §4) that the store keeps, the rules read and the report draws; ``from_dict`` reads a
stored one back. Undefined values (a class with fewer than two usable examples) are ``None``,
never NaN, so no NaN ever reaches JSON, the store or a rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.stiffness.statistics_result import GradientStatistics

Matrix = tuple[tuple[float | None, ...], ...]


def _clean(value: float | None) -> float | None:
    """None for missing or non-finite values, a plain float otherwise."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


@dataclass(frozen=True)
class ClassStiffness:
    """One class-stiffness matrix C (rows: class of x1, columns: class of x2) and summaries.

    ``within``/``between`` are macro averages (mean of the defined diagonal / off-diagonal
    entries: every class counts equally); the ``_pooled`` values average over all pairs
    (bigger classes count more). ``pair_counts`` holds how many pairs each entry averages.
    """

    matrix: Matrix
    pair_counts: tuple[tuple[int, ...], ...]
    within: float | None
    between: float | None
    within_pooled: float | None
    between_pooled: float | None
    per_class: tuple[float | None, ...]

    @classmethod
    def from_sums(
        cls,
        sums: Sequence[Sequence[float]],
        counts: Sequence[Sequence[int]],
    ) -> ClassStiffness:
        """Build from per-cell sums of stiffness over pairs and the number of pairs per cell.

        Every summary follows from these two matrices, so every path (class mode, pair mode,
        the reference) shares this one definition of within, between and pooled.
        """
        size = len(counts)
        matrix = tuple(
            tuple(
                _clean(sums[a][b] / counts[a][b]) if counts[a][b] > 0 else None for b in range(size)
            )
            for a in range(size)
        )
        diagonal = tuple(matrix[a][a] for a in range(size))
        off = [matrix[a][b] for a in range(size) for b in range(size) if a != b]
        within_pairs = sum(counts[a][a] for a in range(size))
        between_pairs = sum(counts[a][b] for a in range(size) for b in range(size) if a != b)
        within_sum = sum(float(sums[a][a]) for a in range(size) if counts[a][a] > 0)
        between_sum = sum(
            float(sums[a][b])
            for a in range(size)
            for b in range(size)
            if a != b and counts[a][b] > 0
        )
        return cls(
            matrix=matrix,
            pair_counts=tuple(tuple(int(c) for c in row) for row in counts),
            within=_mean(diagonal),
            between=_mean(off),
            within_pooled=_clean(within_sum / within_pairs) if within_pairs else None,
            between_pooled=_clean(between_sum / between_pairs) if between_pairs else None,
            per_class=diagonal,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrix": [list(row) for row in self.matrix],
            "within": self.within,
            "between": self.between,
            "within_pooled": self.within_pooled,
            "between_pooled": self.between_pooled,
            "per_class": list(self.per_class),
            "pair_counts": [list(row) for row in self.pair_counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassStiffness:
        return cls(
            matrix=tuple(tuple(_clean(v) for v in row) for row in data["matrix"]),
            pair_counts=tuple(tuple(int(c) for c in row) for row in data["pair_counts"]),
            within=_clean(data["within"]),
            between=_clean(data["between"]),
            within_pooled=_clean(data["within_pooled"]),
            between_pooled=_clean(data["between_pooled"]),
            per_class=tuple(_clean(v) for v in data["per_class"]),
        )


@dataclass(frozen=True)
class PairSetStiffness:
    """Stiffness between two example sets (e.g. the training probe against the held-out one)."""

    cosine: ClassStiffness
    sign: ClassStiffness | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cosine": self.cosine.to_dict(),
            "sign": self.sign.to_dict() if self.sign is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairSetStiffness:
        sign = data.get("sign")
        return cls(
            cosine=ClassStiffness.from_dict(data["cosine"]),
            sign=ClassStiffness.from_dict(sign) if sign is not None else None,
        )


@dataclass(frozen=True)
class DistanceProfile:
    """Cosine stiffness against input distance 1 - cos(x1, x2), in equal-width bins.

    ``critical_length`` is the distance at which within-class stiffness first crosses zero
    (linear interpolation between bin centres); None when it stays positive.
    """

    edges: tuple[float, ...]
    within: tuple[float | None, ...]
    between: tuple[float | None, ...]
    within_pairs: tuple[int, ...]
    between_pairs: tuple[int, ...]
    critical_length: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "within": list(self.within),
            "between": list(self.between),
            "within_pairs": list(self.within_pairs),
            "between_pairs": list(self.between_pairs),
            "critical_length": self.critical_length,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistanceProfile:
        return cls(
            edges=tuple(float(e) for e in data["edges"]),
            within=tuple(_clean(v) for v in data["within"]),
            between=tuple(_clean(v) for v in data["between"]),
            within_pairs=tuple(int(c) for c in data["within_pairs"]),
            between_pairs=tuple(int(c) for c in data["between_pairs"]),
            critical_length=_clean(data["critical_length"]),
        )


@dataclass(frozen=True)
class Counts:
    """How many examples and parameters the numbers rest on."""

    examples: int
    per_class: tuple[int, ...]
    zero_gradient: int
    train_examples: int
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "per_class": list(self.per_class),
            "zero_gradient": self.zero_gradient,
            "train_examples": self.train_examples,
            "parameters": self.parameters,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        return cls(
            examples=int(data["examples"]),
            per_class=tuple(int(c) for c in data["per_class"]),
            zero_gradient=int(data["zero_gradient"]),
            train_examples=int(data["train_examples"]),
            parameters=int(data["parameters"]),
        )


@dataclass(frozen=True)
class StiffnessResult:
    """Everything one evaluation measured.

    ``cosine`` (and ``sign`` in pair mode) are over the held-out probe (val-val; the whole
    probe when it has no splits), and so are ``probe_loss``/``probe_accuracy``. When the probe
    has a training split, ``pair_sets`` adds ``train-val`` and ``train-train``, and
    ``train_probe_loss``/``train_probe_accuracy`` are set. ``gradient_norms`` are per
    example, in probe order. ``timings`` are seconds. ``uncertainty`` maps rule metric names
    (``within_class``, ``within_class_pooled``, ``sign_within_class``, ...) to jackknife
    standard errors over the held-out examples.
    """

    mode: str
    classes: tuple[int, ...]
    probe_loss: float | None
    probe_accuracy: float | None
    cosine: ClassStiffness
    sign: ClassStiffness | None
    counts: Counts
    gradient_norms: tuple[float | None, ...]
    precision: str = "fp32"
    device: str = "cpu"
    pair_sets: Mapping[str, PairSetStiffness] = field(default_factory=dict)
    distance: DistanceProfile | None = None
    train_probe_loss: float | None = None
    train_probe_accuracy: float | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    uncertainty: Mapping[str, float | None] = field(default_factory=dict)
    statistics: GradientStatistics | None = None  # the training split's; None without one

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "classes": list(self.classes),
            "probe_loss": _clean(self.probe_loss),
            "probe_accuracy": _clean(self.probe_accuracy),
            "train_probe_loss": _clean(self.train_probe_loss),
            "train_probe_accuracy": _clean(self.train_probe_accuracy),
            "cosine": self.cosine.to_dict(),
            "sign": self.sign.to_dict() if self.sign is not None else None,
            "pair_sets": {name: ps.to_dict() for name, ps in self.pair_sets.items()},
            "distance": self.distance.to_dict() if self.distance is not None else None,
            "counts": self.counts.to_dict(),
            "gradient_norms": [_clean(v) for v in self.gradient_norms],
            "precision": self.precision,
            "device": self.device,
            "timings": {k: float(v) for k, v in self.timings.items()},
            "uncertainty": {k: _clean(v) for k, v in self.uncertainty.items()},
            "statistics": self.statistics.to_dict() if self.statistics is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StiffnessResult:
        sign = data.get("sign")
        distance = data.get("distance")
        statistics = data.get("statistics")
        return cls(
            mode=str(data["mode"]),
            classes=tuple(int(c) for c in data["classes"]),
            probe_loss=_clean(data.get("probe_loss")),
            probe_accuracy=_clean(data.get("probe_accuracy")),
            train_probe_loss=_clean(data.get("train_probe_loss")),
            train_probe_accuracy=_clean(data.get("train_probe_accuracy")),
            cosine=ClassStiffness.from_dict(data["cosine"]),
            sign=ClassStiffness.from_dict(sign) if sign is not None else None,
            pair_sets={
                name: PairSetStiffness.from_dict(ps)
                for name, ps in (data.get("pair_sets") or {}).items()
            },
            distance=DistanceProfile.from_dict(distance) if distance is not None else None,
            counts=Counts.from_dict(data["counts"]),
            gradient_norms=tuple(_clean(v) for v in data.get("gradient_norms", [])),
            precision=str(data.get("precision", "fp32")),
            device=str(data.get("device", "cpu")),
            timings={k: float(v) for k, v in (data.get("timings") or {}).items()},
            uncertainty={k: _clean(v) for k, v in (data.get("uncertainty") or {}).items()},
            statistics=GradientStatistics.from_dict(statistics) if statistics else None,
        )
