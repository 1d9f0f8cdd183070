"""The rule engine: every rule of a rule set judges every evaluation, in order, with state.

``RuleEngine.observe`` takes one stored evaluation (the ``evaluate --json`` object) and
returns one ``Decision`` per top-level rule: stop or not, a sentence saying why, and the rule's
state, plain JSON that ``state``/``restore`` carry across a daemon restart. ``replay`` runs a
fresh engine over a stored history; ``backtest`` and a SIGHUP rule reload both start there.
The engine is pure: no clock, no I/O, no logging; the daemon records and signals.

Top-level rules are alternatives (any one stops the run). Once one says stop it keeps saying
so, with a reason that names since when, even when its condition no longer holds: a stop is
never retracted silently. The metric-tracking kinds (decline, slope, threshold) live in
``trends``, on the base classes in ``kinds``, and what rules read in ``readings``; the
non-finite guard and the combinators are here, beside the table that builds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.rules.kinds import RuleSpec, Runner, Verdict, where
from monitor.rules.readings import metric_reading, metric_value, standard_error
from monitor.rules.spec import (
    AllRule,
    AnyRule,
    DeclineRule,
    NonFiniteRule,
    RuleSet,
    SlopeRule,
    rule_name,
)
from monitor.rules.trends import Decline, Slope, Threshold

__all__ = [
    "Decision",
    "ReplayResult",
    "RuleEngine",
    "RuleStateError",
    "StopPoint",
    "metric_value",
    "replay",
    "standard_error",
]


@dataclass(frozen=True)
class Decision:
    """What one rule said about one evaluation: stop or not, why, and its state afterwards."""

    rule: str
    stop: bool
    reason: str
    state: Mapping[str, Any]


class RuleStateError(ValueError):
    """A saved rule state that does not belong to this rule (edited rules, a corrupt store):
    the caller should rebuild the state by replaying the stored history instead."""


class NonFinite(Runner):
    """NaN or inf in any listed metric; a null where a measured value must stand counts too,
    since stored JSON keeps NaN/inf as null (see ``readings.Reading``). Metrics that this
    evaluation did not measure (sign stiffness in class mode) are not checked."""

    kind = "non_finite"

    def __init__(self, spec: NonFiniteRule, name: str) -> None:
        super().__init__(name)
        self.spec = spec

    def observe(self, step: int | None, result: Mapping[str, Any]) -> Verdict:
        index, self.evaluations = self.evaluations, self.evaluations + 1
        readings = {metric: metric_reading(result, metric) for metric in self.spec.metrics}
        bad = [
            f"{metric} is {'null (NaN or inf when stored)' if r.value is None else r.value}"
            for metric, r in readings.items()
            if r.non_finite
        ]
        if not bad:
            checked = [m for m, r in readings.items() if r.value is not None or r.expected]
            listed = ", ".join(checked) if checked else "no metric (none measured here)"
            return Verdict(False, f"Finite at {where(step, index)}: {listed}.")
        reason = f"Not finite at {where(step, index)}: {'; '.join(bad)}."
        if step is not None and step < self.spec.min_step:
            return Verdict(
                False, f"{reason} Not stopping: warm-up until step {self.spec.min_step}."
            )
        return Verdict(True, reason)


class Combinator(Runner):
    """``all``: every sub-rule says stop at this evaluation; ``any``: at least one does. Every
    sub-rule sees every evaluation (no short cut), so their states stay complete."""

    def __init__(self, spec: AllRule | AnyRule, name: str) -> None:
        super().__init__(name)
        self.kind = spec.kind
        self.skip_unmeasured = isinstance(spec, AllRule) and spec.skip_unmeasured
        self.children = [build_runner(sub, rule_name(sub, i)) for i, sub in enumerate(spec.rules)]

    def observe(self, step: int | None, result: Mapping[str, Any]) -> Verdict:
        self.evaluations += 1
        verdicts = [child.observe(step, result) for child in self.children]
        counted = [v for v in verdicts if v.measured or not self.skip_unmeasured]
        says = sum(v.stop for v in counted)
        stop = bool(counted) and says == len(counted) if self.kind == "all" else says > 0
        need = "all must" if self.kind == "all" else "one is enough"
        skipped = len(verdicts) - len(counted)
        left_out = f", {skipped} left out as not measured" if skipped else ""
        details = " ".join(
            f"[{c.name}: {'stop' if v.stop else 'go on'}] {v.reason}"
            for c, v in zip(self.children, verdicts, strict=True)
        )
        return Verdict(
            stop,
            f"{says} of {len(counted)} sub-rules say stop ({need}{left_out}). {details}",
            measured=any(v.measured for v in verdicts),
        )

    def state(self) -> dict[str, Any]:
        return {**super().state(), "rules": [child.state() for child in self.children]}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        if len(state["rules"]) != len(self.children):
            raise ValueError(f"saved state has {len(state['rules'])} sub-rules")
        for child, saved in zip(self.children, state["rules"], strict=True):
            child.restore(saved)


def build_runner(spec: RuleSpec, name: str) -> Runner:
    """The closed table from a validated spec to its evaluator."""
    if isinstance(spec, DeclineRule):
        return Decline(spec, name)
    if isinstance(spec, SlopeRule):
        return Slope(spec, name)
    if isinstance(spec, NonFiniteRule):
        return NonFinite(spec, name)
    if isinstance(spec, (AllRule, AnyRule)):
        return Combinator(spec, name)
    return Threshold(spec, name)


def _digest(spec: RuleSpec) -> str:
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StopPoint:
    """Where a rule first said stop: ``index`` counts evaluations from 0, in replay order."""

    index: int
    step: int | None
    rule: str
    reason: str


class RuleEngine:
    """Per-run rule state for one rule set; feed it each evaluation once, oldest first."""

    def __init__(self, rule_set: RuleSet) -> None:
        self.rule_set = rule_set
        self._runners: dict[str, Runner] = {}
        self._digests: dict[str, str] = {}
        for index, spec in enumerate(rule_set.rules):
            name = rule_name(spec, index)
            if name in self._runners:
                raise ValueError(f"{rule_set.source}: two top-level rules are named {name!r}")
            self._runners[name] = build_runner(spec, name)
            self._digests[name] = _digest(spec)
        self._stopped: dict[str, StopPoint | None] = dict.fromkeys(self._runners)

    @property
    def names(self) -> list[str]:
        return list(self._runners)

    @property
    def stopped(self) -> dict[str, StopPoint]:
        """The top-level rules that have said stop, with where they first did."""
        return {name: point for name, point in self._stopped.items() if point is not None}

    def observe(self, step: int | None, result: Mapping[str, Any]) -> list[Decision]:
        """Judge one evaluation: one decision per top-level rule, in rule-set order."""
        decisions = []
        for name, runner in self._runners.items():
            index = runner.evaluations
            verdict = runner.observe(step, result)
            latched = self._stopped[name]
            if latched is None:
                if verdict.stop:
                    self._stopped[name] = StopPoint(index, step, name, verdict.reason)
                reason = verdict.reason
            elif verdict.stop:
                reason = f"Still stopping (since {where(latched.step, latched.index)}): "
                reason += verdict.reason
            else:
                reason = (
                    f"Stopped since {where(latched.step, latched.index)}: {latched.reason} "
                    f"A stop is never retracted, although now: {verdict.reason}"
                )
            decisions.append(Decision(name, latched is not None or verdict.stop, reason,
                                      self._state_of(name)))  # fmt: skip
        return decisions

    def _state_of(self, name: str) -> dict[str, Any]:
        point = self._stopped[name]
        stopped = None if point is None else {
            "index": point.index, "step": point.step, "reason": point.reason
        }  # fmt: skip
        return {**self._runners[name].state(), "spec": self._digests[name], "stopped": stopped}

    def state(self) -> dict[str, dict[str, Any]]:
        """Every top-level rule's state by name: JSON-serialisable, fresh on every call."""
        return {name: self._state_of(name) for name in self._runners}

    def restore(self, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Resume from saved states; returns the rules that had none (they start fresh).

        States of rules no longer in the set are ignored. A state saved for a differently
        configured rule raises ``RuleStateError``; the engine may then be half restored, so
        discard it and replay the stored history instead.
        """
        fresh = []
        for name, runner in self._runners.items():
            saved = states.get(name)
            if saved is None:
                fresh.append(name)
                continue
            if saved.get("spec") != self._digests[name]:
                raise RuleStateError(f"rule {name!r}: saved state is for a different definition")
            try:
                runner.restore(saved)
                point = saved["stopped"]
                self._stopped[name] = None if point is None else StopPoint(
                    int(point["index"]), point["step"], name, str(point["reason"])
                )  # fmt: skip
            except (KeyError, TypeError, ValueError) as error:
                raise RuleStateError(f"rule {name!r}: saved state does not fit ({error})") from None
        return fresh


@dataclass(frozen=True)
class ReplayResult:
    """A rule set run over a stored history: the first stop, each rule's, and final states."""

    evaluations: int
    stop: StopPoint | None
    stops: Mapping[str, StopPoint]
    states: Mapping[str, dict[str, Any]]


def replay(
    rule_set: RuleSet, evaluations: Iterable[tuple[int | None, Mapping[str, Any]]]
) -> ReplayResult:
    """Run a fresh engine over ``(step, result)`` pairs, oldest first. ``stop`` is the first
    evaluation at which any rule said stop (the earlier rule in the set on a tie)."""
    engine = RuleEngine(rule_set)
    count = 0
    for step, result in evaluations:
        engine.observe(step, result)
        count += 1
    stops = engine.stopped
    first = min(stops.values(), key=lambda p: (p.index, engine.names.index(p.rule)), default=None)
    return ReplayResult(count, first, stops, engine.state())
