"""What every rule kind is: a ``Runner`` that sees each evaluation and gives a ``Verdict``.

This module owns the base classes and what the kinds share: ``Runner`` (an evaluator with
JSON state), ``Tracked`` (the base of the kinds that follow one smoothed metric; the concrete
ones live in ``trends``), ``Verdict`` and the phrasing helpers.

The kinds follow Lightning's ``EarlyStopping`` vocabulary, with patience counted in
evaluations. DESIGN §2 warns that stiffness may fall from the first epoch or peak long before
overfitting, so these rules judge a *smoothed* series and trends, and ``min_sigma`` asks that
a fall exceed the probe's own noise (its jackknife standard error) before it counts.

Shared semantics (the tests in ``tests/rules/test_engine.py`` pin each one):

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

from monitor.rules.readings import Smoother, metric_reading, missing_hint, standard_error
from monitor.rules.spec import (
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
    """``measured``: False when the rule's metric was not measured by this evaluation at all
    (as opposed to measured and not finite), which ``all`` with ``skip_unmeasured`` reads."""

    stop: bool
    reason: str
    measured: bool = True


def where(step: int | None, index: int) -> str:
    """Sentences name the step; evaluations count from 1 (``index`` counts from 0)."""
    return f"step {step}" if step is not None else f"evaluation #{index + 1}"


def count(n: int) -> str:
    return f"{n} evaluation" if n == 1 else f"{n} evaluations"


def optional_float(value: Any) -> float | None:
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
                measured=reading.value is not None or reading.expected,
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
        self.value = optional_float(state["value"])
        self.smoothed = optional_float(state["smoothed"])
        self.smoother.restore(state["smoothing"])
