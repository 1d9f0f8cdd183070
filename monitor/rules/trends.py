"""The metric-tracking rule kinds: ``Decline``, ``Slope`` and ``Threshold``.

Each follows one smoothed metric through ``Tracked`` (in ``kinds``, with the semantics all
kinds share: skipped values, warm-up, level triggering) and adds its own state and ``judge``:
how that state moves with each smoothed value and whether the value would stop the run, with
a sentence saying why. The non-finite guard and the combinators watch no single value and
live in ``engine``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monitor.rules.kinds import Tracked, count, optional_float, where
from monitor.rules.readings import fmt
from monitor.rules.spec import DeclineRule, SlopeRule, ThresholdRule


class Decline(Tracked):
    """Worse than the best smoothed value by more than ``min_delta`` (times ``|best|`` when
    ``relative``), and by more than ``min_sigma`` standard errors when the evaluation carries
    one, for ``patience`` consecutive evaluations. A new best resets the count; so does a
    value within tolerance of the best (the streak of falls is broken)."""

    spec: DeclineRule

    def __init__(self, spec: DeclineRule, name: str) -> None:
        super().__init__(spec, name)
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_index = 0
        self.wait = 0

    def judge(
        self, step: int | None, index: int, value: float, error: float | None
    ) -> tuple[bool, str]:
        spec, sign = self.spec, 1.0 if self.spec.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > 0:
            previous = "" if self.best is None else f" (previous best {fmt(self.best)})"
            self.best, self.best_step, self.best_index, self.wait = value, step, index, 0
            return False, f"{self.label} reached a new best {fmt(value)}{previous}."
        drop = sign * (self.best - value)
        side = "below" if spec.mode == "max" else "above"
        best = f"its best {fmt(self.best)} ({where(self.best_step, self.best_index)})"
        tolerance = spec.min_delta * abs(self.best) if spec.relative else spec.min_delta
        if drop <= tolerance:
            self.wait = 0
            allowed = f"{spec.min_delta:g} × |best| = " if spec.relative else ""
            return (
                False,
                f"{self.label} {fmt(value)} is within {allowed}{fmt(tolerance)} of {best}.",
            )
        if error is not None and spec.min_sigma > 0 and drop <= spec.min_sigma * error:
            self.wait = 0
            return False, (
                f"{self.label} is {fmt(drop)} {side} {best}, within {spec.min_sigma:g} standard "
                f"errors ({spec.min_sigma:g} × {fmt(error)}): probe noise, not a fall."
            )
        self.wait += 1
        note = self.sigma_note(spec.min_sigma, error)
        if self.wait >= spec.patience:
            verb = "fell" if spec.mode == "max" else "rose"
            return True, (
                f"{self.label} {verb} {fmt(drop)} {side} {best} for {count(self.wait)} "
                f"(patience {spec.patience}){note}."
            )
        return False, (
            f"{self.label} is {fmt(drop)} {side} {best}: {count(self.wait)} in a row, "
            f"patience {spec.patience}{note}."
        )

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "best": self.best,
            "best_step": self.best_step,
            "best_index": self.best_index,
            "wait": self.wait,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.best = optional_float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.best_index, self.wait = int(state["best_index"]), int(state["wait"])


class Slope(Tracked):
    """The least-squares slope of the last ``window`` smoothed values, per 1000 steps, is on the
    wrong side of ``threshold`` for ``patience`` consecutive evaluations.

    ``threshold`` is the slowest *improvement* that still counts as fine, so the rule reads
    the same in both modes: with ``trend = slope`` for mode max and ``-slope`` for mode min,
    an evaluation is bad when ``trend < threshold``. For mode max that is ``slope <
    threshold``: 0 flags any fall, -0.01 tolerates falls up to 0.01 per 1000 steps, and +0.01
    also flags a plateau (rising slower than 0.01). For mode min it is ``slope > -threshold``.
    The x axis is step / 1000; when a step in the window is unknown (or all are equal) it is
    the evaluation index, i.e. one evaluation counts as 1000 steps. No verdict until the
    window is full. With ``min_sigma`` and a standard error, the shortfall over the window,
    ``(threshold - trend) × span`` (the fall ``|slope| × span`` when the threshold is 0), must
    also exceed ``min_sigma`` standard errors.
    """

    spec: SlopeRule

    def __init__(self, spec: SlopeRule, name: str) -> None:
        super().__init__(spec, name)
        self.points: list[tuple[int, int | None, float]] = []
        self.slope: float | None = None
        self.bad = 0

    def judge(
        self, step: int | None, index: int, value: float, error: float | None
    ) -> tuple[bool, str]:
        spec = self.spec
        self.points = [*self.points, (index, step, value)][-spec.window :]
        if len(self.points) < spec.window:
            return False, f"{self.label}: {len(self.points)} of {spec.window} values for the slope."
        steps = [s for _, s, _ in self.points]
        known = None not in steps and len(set(steps)) > 1
        xs = [s / 1000 for s in steps if s is not None] if known else [i for i, _, _ in self.points]
        ys = [v for _, _, v in self.points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
        self.slope = slope
        high = spec.mode == "max"
        trend = slope if high else -slope
        side, limit = ("below", spec.threshold) if high else ("above", 0.0 - spec.threshold)
        unit = "per 1000 steps" if known else "per 1000 steps (steps unknown: 1000 per evaluation)"
        said = f"{self.label} has slope {slope:+.4g} {unit} over the last {spec.window} evaluations"
        if trend >= spec.threshold:
            self.bad = 0
            return False, f"{said}, not {side} {fmt(limit)}."
        shortfall = (spec.threshold - trend) * (max(xs) - min(xs))
        if error is not None and spec.min_sigma > 0 and shortfall <= spec.min_sigma * error:
            self.bad = 0
            return False, (
                f"{said}, {side} {fmt(limit)}, but by {fmt(shortfall)} over the window: within "
                f"{spec.min_sigma:g} standard errors ({spec.min_sigma:g} × {fmt(error)})."
            )
        self.bad += 1
        note = self.sigma_note(spec.min_sigma, error)
        if self.bad >= spec.patience:
            return True, (
                f"{said}, {side} {fmt(limit)} for {count(self.bad)} "
                f"(patience {spec.patience}){note}."
            )
        return False, (
            f"{said}, {side} {fmt(limit)}: {count(self.bad)} in a row, "
            f"patience {spec.patience}{note}."
        )

    def state(self) -> dict[str, Any]:
        points = [list(p) for p in self.points]
        return {**super().state(), "points": points, "slope": self.slope, "bad": self.bad}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.points = [
            (int(i), None if s is None else int(s), float(v)) for i, s, v in state["points"]
        ]
        self.slope, self.bad = optional_float(state["slope"]), int(state["bad"])


class Threshold(Tracked):
    """Lightning's bounds, inclusive: ``stopping_threshold`` reached (mode max: value >= it,
    min: <=) or ``divergence_threshold`` crossed (max: value <= it, min: >=). Immediate."""

    spec: ThresholdRule

    def judge(
        self, step: int | None, index: int, value: float, error: float | None
    ) -> tuple[bool, str]:
        goal, bound = self.spec.stopping_threshold, self.spec.divergence_threshold
        high = self.spec.mode == "max"
        if bound is not None and (value <= bound if high else value >= bound):
            return True, f"{self.label} {fmt(value)} crossed the divergence threshold {fmt(bound)}."
        if goal is not None and (value >= goal if high else value <= goal):
            return True, f"{self.label} {fmt(value)} reached the stopping threshold {fmt(goal)}."
        parts = [] if goal is None else [f"has not reached the stopping threshold {fmt(goal)}"]
        if bound is not None:
            parts.append(f"is clear of the divergence threshold {fmt(bound)}")
        return False, f"{self.label} {fmt(value)} {' and '.join(parts)}."
