"""What the two modes share: where each example sits, and the shape of what they return.

``ProbeLayout`` gives each probe example its class row and its split; both modes need the
same answer, so it is computed once here. Without splits every example
is "held out" (the primary, val-val set); with splits the training examples form a second
set for the train-val and train-train pair sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from monitor.errors import EngineError
from monitor.stiffness.inputs import ProbeSet
from monitor.stiffness.result import ClassStiffness, DistanceProfile, PairSetStiffness
from monitor.stiffness.statistics_result import GradientStatistics


@dataclass(frozen=True)
class ModeResult:
    """What a mode adds to the result besides the per-example statistics."""

    cosine: ClassStiffness
    sign: ClassStiffness | None = None
    pair_sets: dict[str, PairSetStiffness] = field(default_factory=dict)
    distance: DistanceProfile | None = None
    uncertainty: dict[str, float | None] = field(default_factory=dict)
    statistics: GradientStatistics | None = None  # the training split's (one process only)


@dataclass(frozen=True, eq=False)
class ProbeLayout:
    """``class_index`` (N,) int64: position of each target in ``classes`` (matrix order).

    ``split`` (N,) int64 is 0 for held-out examples and 1 for training ones (always 0 when
    the probe has no splits, even if ``is_train`` is all True: the whole probe is then the
    held-out set, as ``StiffnessResult`` documents). ``source_indices`` are the examples'
    positions in the probe file, in this order.
    """

    classes: tuple[int, ...]
    class_index: torch.Tensor
    split: torch.Tensor
    has_splits: bool
    source_indices: tuple[int, ...] = ()

    @classmethod
    def from_probe(cls, probe: ProbeSet) -> ProbeLayout:
        targets = probe.targets.detach().cpu()
        if len(set(probe.classes)) != len(probe.classes):
            raise EngineError(f"probe classes {probe.classes} contain duplicates")
        lookup = torch.full((max(max(probe.classes), int(targets.max())) + 1,), -1)
        if min(probe.classes) < 0 or int(targets.min()) < 0:
            raise EngineError("probe targets and classes must be non-negative class indices")
        lookup[torch.tensor(probe.classes)] = torch.arange(len(probe.classes))
        class_index = lookup[targets]
        if bool((class_index < 0).any()):
            missing = sorted({int(t) for t in targets[class_index < 0].tolist()})
            raise EngineError(f"probe targets {missing} are not among its classes {probe.classes}")
        if probe.has_splits:
            assert probe.is_train is not None
            split = probe.is_train.detach().cpu().to(torch.int64)
        else:
            split = torch.zeros_like(targets)
        return cls(probe.classes, class_index, split, probe.has_splits, probe.source_indices)

    @property
    def size(self) -> int:
        return int(self.class_index.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def held_out(self) -> torch.Tensor:
        """(N,) bool: the examples of the primary (val-val) set."""
        return self.split == 0

    @property
    def train(self) -> torch.Tensor:
        """(N,) bool: the training-split examples (none without splits)."""
        return self.split == 1

    def per_class(self) -> tuple[int, ...]:
        """Examples per class over the whole probe, in matrix order."""
        counts = torch.bincount(self.class_index, minlength=self.num_classes)
        return tuple(int(c) for c in counts.tolist())
