"""An attempt's best checkpoint: what Keras calls ``restore_best_weights``, for any trainer.

The best is judged on the raw value of one metric: the rule set's ``best`` metric, else that of
the first rule that tracks one (so a rule set watching the probe loss picks the checkpoint with
the lowest probe loss), else the probe loss. Raw, not smoothed: the checkpoint to restore is the
one whose own value was best, and smoothing only decides *when* to stop. Ties keep the earlier
checkpoint, as Keras and Lightning do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from monitor.rules.readings import metric_value
from monitor.rules.spec import BestSpec, RuleSet


@dataclass(frozen=True)
class BestCheckpoint:
    """The best checkpoint so far: where it is and what it scored."""

    metric: str
    mode: str
    step: int | None
    value: float
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_spec(rules: RuleSet) -> BestSpec:
    """The metric and mode that pick the best checkpoint under ``rules``."""
    if rules.best is not None:
        return rules.best
    pending: list[Any] = list(rules.rules)
    while pending:  # depth first, in file order: the first tracked metric speaks
        rule = pending.pop(0)
        metric, mode = getattr(rule, "metric", None), getattr(rule, "mode", None)
        if isinstance(metric, str) and mode in ("min", "max"):
            return BestSpec(metric=metric, mode=mode)
        pending[:0] = list(getattr(rule, "rules", []))
    return BestSpec()


class BestTracker:
    """Keeps the best checkpoint of the evaluations it is shown, in evaluation order."""

    def __init__(self, spec: BestSpec) -> None:
        self.spec = spec
        self.best: BestCheckpoint | None = None

    def observe(self, step: int | None, result: Mapping[str, Any], path: str) -> bool:
        """Consider one evaluation; True when it is the new best."""
        value = metric_value(result, self.spec.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None:
            better = value < self.best.value if self.spec.mode == "min" else value > self.best.value
            if not better:
                return False
        self.best = BestCheckpoint(self.spec.metric, self.spec.mode, step, value, path)
        return True


def best_of(
    spec: BestSpec, evaluations: Iterable[tuple[int | None, Mapping[str, Any], str]]
) -> BestCheckpoint | None:
    """The best of ``(step, result, path)`` evaluations, in the order given."""
    tracker = BestTracker(spec)
    for step, result, path in evaluations:
        tracker.observe(step, result, path)
    return tracker.best
