"""One small evaluator per rule kind: each sees every evaluation and says stop or not, and why.

The kinds follow Lightning's ``EarlyStopping`` vocabulary, with patience counted in
evaluations. DESIGN §2 warns that stiffness may fall from the first epoch or peak long before
overfitting, so these rules judge a *smoothed* series and trends, and ``min_sigma`` asks that
a fall exceed the probe's own noise (its jackknife standard error) before it counts.

Shared semantics (the tests in ``tests/test_rules.py`` pin each one):

- A missing or non-finite value skips the evaluation for a tracked rule: its state is left as
  it was and it does not say stop on that evaluation (no new evidence); the ``non_finite``
  kind is the one that watches for NaN and inf.
- Warm-up (``min_step``, ``min_evaluations``) holds back the verdict, not the bookkeeping:
  smoothing, best values and patience counters run from the first evaluation, so the first
  evaluation after warm-up may stop at once when the evidence is already there.
  ``min_evaluations`` counts evaluations with a usable value; ``min_step`` cannot hold back an
  evaluation whose step is unknown.
- Kinds are level-triggered (an ``all`` needs its sub-rules to agree at one evaluation);
  latching a stop is the engine's job, for top-level rules only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.rule_metrics import Smoother, fmt, metric_reading, missing_hint, standard_error
from monitor.rule_spec import (
    AllRule,
    AnyRule,
    DeclineRule,
    NonFiniteRule,
    SlopeRule,
    ThresholdRule,
)

RuleSpec = DeclineRule | SlopeRule | ThresholdRule | NonFiniteRule | AllRule | AnyRule


@dataclass(frozen=True)
class Verdict:
    stop: bool
    reason: str


def where(step: int | None, index: int) -> str:
    """Sentences name the step; evaluations count from 1 (``index`` counts from 0)."""
    return f"step {step}" if step is not None else f"evaluation #{index + 1}"


def count(n: int) -> str:
    return f"{n} evaluation" if n == 1 else f"{n} evaluations"


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


class Runner(ABC):
    """A rule kind's evaluator with JSON state: ``observe`` once per evaluation, in order."""

    kind: str

    def __init__(self, name: str) -> None:
        self.name = name
        self.evaluations = 0

    @abstractmethod
    def observe(self, step: int | None, result: Mapping[str, Any]) -> Verdict: ...

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "evaluations": self.evaluations}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"saved state is for a {state.get('kind')!r} rule, not {self.kind!r}")
        self.evaluations = int(state["evaluations"])


class Tracked(Runner):
    """Shared by the kinds that follow one smoothed metric (decline, slope, threshold)."""

    def __init__(self, spec: DeclineRule | SlopeRule | ThresholdRule, name: str) -> None:
        super().__init__(name)
        self.spec = spec
        self.kind = spec.kind
        self.smoother = Smoother(spec.smoothing)
        self.seen = 0
        self.value: float | None = None
        self.smoothed: float | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.metric} ({self.smoother.label})"

    def observe(self, step: int | None, result: Mapping[str, Any]) -> Verdict:
        index, self.evaluations = self.evaluations, self.evaluations + 1
        reading = metric_reading(result, self.spec.metric)
        if reading.value is None or not reading.finite:
            what = "no value" if reading.value is None else f"a non-finite value ({reading.value})"
            hint = missing_hint(self.spec.metric) if reading.value is None else ""
            return Verdict(
                False,
                f"{what.capitalize()} for {self.spec.metric}{hint} at {where(step, index)}; "
                "this rule skipped the evaluation.",
            )
        self.seen += 1
        self.value = reading.value
        self.smoothed = self.smoother.update(reading.value)
        bad, reason = self.judge(
            step, index, self.smoothed, standard_error(result, self.spec.metric)
        )
        if not bad:
            return Verdict(False, reason)
        if step is not None and step < self.spec.min_step:
            return Verdict(
                False, f"{reason} Not stopping: warm-up until step {self.spec.min_step}."
            )
        if self.seen < self.spec.min_evaluations:
            return Verdict(
                False,
                f"{reason} Not stopping: warm-up until {self.spec.min_evaluations} evaluations "
                f"with a value ({self.seen} so far).",
            )
        return Verdict(True, reason)

    @abstractmethod
    def judge(
        self, step: int | None, index: int, value: float, error: float | None
    ) -> tuple[bool, str]:
        """Update the kind's state with the smoothed value; (would stop, why)."""

    def sigma_note(self, min_sigma: float, error: float | None) -> str:
        if min_sigma > 0 and error is None:
            return " (no standard error in this evaluation, so min_sigma was not applied)"
        return ""

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "seen": self.seen,
            "value": self.value,
            "smoothed": self.smoothed,
            "smoothing": self.smoother.state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.seen = int(state["seen"])
        self.value = _optional(state["value"])
        self.smoothed = _optional(state["smoothed"])
        self.smoother.restore(state["smoothing"])


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
        self.best = _optional(state["best"])
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
        self.slope, self.bad = _optional(state["slope"]), int(state["bad"])


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
