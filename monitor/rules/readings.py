"""What a rule reads from one stored evaluation, and how it smooths the series it tracks.

Rules see an evaluation as the ``evaluate --json`` object the store keeps (DESIGN §4), never
as the engine's typed value, so a rule replayed over years-old stored results reads exactly
what a live rule reads. That JSON holds ``null`` wherever a value was undefined or non-finite
(``StiffnessResult.to_dict`` cleans NaN and inf away). A ``None`` therefore means either "not
measured here" (sign stiffness in class mode, a train-val metric without a training split) or
"measured and not finite". ``metric_reading`` tells the two apart by whether the field's
container was measured, which is what the ``non_finite`` rule needs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.rules.spec import CLASS_METRIC, LOSS_GAP, Smoothing

# metric -> (path into the result, whether None means "non-finite" once the path's container
# exists). Between-class values also need two classes; handled in ``metric_reading``.
_PATHS: dict[str, tuple[tuple[str, ...], bool]] = {
    "within_class": (("cosine", "within"), True),
    "between_class": (("cosine", "between"), True),
    "within_class_pooled": (("cosine", "within_pooled"), True),
    "between_class_pooled": (("cosine", "between_pooled"), True),
    "sign_within_class": (("sign", "within"), True),
    "sign_between_class": (("sign", "between"), True),
    "sign_within_class_pooled": (("sign", "within_pooled"), True),
    "train_val_within_class": (("pair_sets", "train-val", "cosine", "within"), True),
    "train_val_between_class": (("pair_sets", "train-val", "cosine", "between"), True),
    "train_val_sign_within_class": (("pair_sets", "train-val", "sign", "within"), True),
    "train_val_sign_between_class": (("pair_sets", "train-val", "sign", "between"), True),
    "train_train_within_class": (("pair_sets", "train-train", "cosine", "within"), True),
    "train_train_between_class": (("pair_sets", "train-train", "cosine", "between"), True),
    "probe_loss": (("probe_loss",), True),
    "probe_accuracy": (("probe_accuracy",), True),
    "train_probe_loss": (("train_probe_loss",), True),
    "train_probe_accuracy": (("train_probe_accuracy",), True),
    # None is the documented "stiffness stays positive": a healthy value, not a divergence.
    "critical_length": (("distance", "critical_length"), False),
    # The training split's gradient statistics: null (not measured) without a training split
    # or with stiffness.statistics off; a measured statistic can be undefined (None) too.
    "gradient_disparity": (("statistics", "gradient_disparity"), False),
    "gsnr": (("statistics", "gsnr"), False),
    "gsnr_median": (("statistics", "gsnr_median"), False),
    "opposing_share": (("statistics", "opposing_share"), False),
}

_HINTS = {
    "sign": " (class mode?)",
    "train": " (no training split in the probe?)",
    "critical_length": " (no distance profile, or stiffness never crosses zero?)",
    "gradient_disparity": " (no training split, or stiffness.statistics off?)",
    "gsnr": " (no training split, or stiffness.statistics off?)",
    "opposing_share": " (no training split, or stiffness.statistics off?)",
    "class_within": " (unknown label, or fewer than two usable examples?)",
}


@dataclass(frozen=True)
class Reading:
    """One metric of one evaluation: its value (None when absent) and whether an absent value
    stands for a non-finite one (the field was measured, and JSON keeps NaN/inf as null)."""

    value: float | None
    expected: bool

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def non_finite(self) -> bool:
        """NaN or inf, or null where a measured value must stand (the stored form of NaN)."""
        return (self.value is None and self.expected) or (
            self.value is not None and not math.isfinite(self.value)
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metric_reading(result: Mapping[str, Any], metric: str) -> Reading:
    """Read ``metric`` (a ``spec.METRICS`` name or ``class_within:<label>``) from a stored
    evaluation. Unknown metrics and malformed results give an absent, unexpected value."""
    match = CLASS_METRIC.match(metric)
    if match:
        # A class's diagonal may be undefined for healthy reasons (a perfectly fitted class has
        # near-zero gradients), so its absence never counts as non-finite.
        cosine, classes = result.get("cosine"), result.get("classes")
        if not isinstance(cosine, Mapping) or not isinstance(classes, list):
            return Reading(None, False)
        label, per_class = int(match.group(1)), cosine.get("per_class")
        if label not in classes or not isinstance(per_class, list):
            return Reading(None, False)
        index = classes.index(label)
        return Reading(_number(per_class[index]) if index < len(per_class) else None, False)
    if metric == LOSS_GAP:
        return _loss_gap(result)
    if metric not in _PATHS:
        return Reading(None, False)
    path, expected = _PATHS[metric]
    node: Any = result
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping) or path[-1] not in node:
        return Reading(None, False)
    if metric.startswith("train_probe") and not isinstance(
        (result.get("pair_sets") or {}).get("train-val"), Mapping
    ):
        expected = False  # written as null whenever the probe has no training split
    if "between" in metric and len(result.get("classes") or []) < 2:
        expected = False  # one class has no off-diagonal
    return Reading(_number(node[path[-1]]), expected)


def _loss_gap(result: Mapping[str, Any]) -> Reading:
    """The training split's loss minus the held-out loss. Non-finite when either loss is."""
    train = metric_reading(result, "train_probe_loss")
    held = metric_reading(result, "probe_loss")
    if train.value is None or held.value is None:
        return Reading(None, train.expected and held.expected)
    return Reading(train.value - held.value, True)


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    """The metric's value in a stored evaluation: a float (NaN/inf kept as they are when the
    mapping holds them), or None when the evaluation has no value for it."""
    return metric_reading(result, metric).value


def standard_error(result: Mapping[str, Any], metric: str) -> float | None:
    """The evaluation's standard error for ``metric`` (``result["uncertainty"][metric]``, the
    jackknife over probe examples), or None when it carries none usable."""
    table = result.get("uncertainty")
    value = _number(table.get(metric)) if isinstance(table, Mapping) else None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def missing_hint(metric: str) -> str:
    """A short guess at why an evaluation has no value for ``metric``, for reasons."""
    for prefix, hint in _HINTS.items():
        if metric.startswith(prefix) or metric.startswith(f"train_val_{prefix}"):
            return hint
    return ""


def fmt(value: float | None) -> str:
    """Numbers in reasons: four significant digits, enough to see a difference of a few SE."""
    return "none" if value is None else f"{value:.4g}"


class Smoother:
    """Smooths a rule's raw series: none, EMA (``alpha`` weights the newest value) or the
    median of the last ``window`` raw values (fewer at the start). Its state is plain JSON."""

    def __init__(self, spec: Smoothing) -> None:
        self.spec = spec
        self.ema: float | None = None
        self.recent: list[float] = []

    @property
    def label(self) -> str:
        if self.spec.kind == "ema":
            return f"EMA α={self.spec.alpha:g}"
        if self.spec.kind == "median":
            return f"median of {self.spec.window}"
        return "raw"

    def update(self, value: float) -> float:
        if self.spec.kind == "ema":
            alpha = self.spec.alpha
            self.ema = value if self.ema is None else alpha * value + (1 - alpha) * self.ema
            return self.ema
        if self.spec.kind == "median":
            self.recent = [*self.recent, value][-self.spec.window :]
            return float(statistics.median(self.recent))
        return value

    def state(self) -> dict[str, Any]:
        if self.spec.kind == "ema":
            return {"ema": self.ema}
        if self.spec.kind == "median":
            return {"recent": list(self.recent)}
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else float(ema)
        self.recent = [float(v) for v in state.get("recent", [])][-self.spec.window :]
