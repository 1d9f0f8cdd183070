"""What the rule series export: each tracked leaf rule's value, best and wait, read from state.

The engine's JSON state (``RuleEngine.state``) nests combinators and differs by kind; this
module walks it against the rule set and flattens it into one ``RuleReading`` per leaf rule
that follows a metric, with the series label that keeps leaves of the same name apart.
``MonitorMetrics.set_rule_states`` turns the readings into gauges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.rules.spec import AllRule, AnyRule, RuleSet, rule_name

#: Rule kinds that follow one smoothed metric; ``non_finite`` and combinators watch no value.
TRACKED_KINDS = ("decline", "slope", "threshold")


@dataclass(frozen=True)
class RuleReading:
    """One leaf rule's exported state; ``best``/``wait`` are None where the kind has none."""

    rule: str
    value: float | None
    best: float | None
    wait: int | None
    has_best: bool


def rule_readings(rules: RuleSet, states: Mapping[str, Mapping[str, Any]]) -> list[RuleReading]:
    """Every tracked leaf rule (``all``/``any`` are walked), read from the engine's JSON state.

    A leaf is labelled with its own name (``rules.spec.rule_name``). Leaves of two combinators
    can share one (``decline-0`` under two ``all`` rules); those are labelled with their path
    from the top-level rule (``top/decline-0``) so neither series overwrites the other.
    """
    leaves: list[tuple[tuple[str, ...], Mapping[str, Any]]] = []

    def walk(spec: Any, path: tuple[str, ...], state: Mapping[str, Any]) -> None:
        if isinstance(spec, (AllRule, AnyRule)):
            sub_states = state.get("rules", [])  # the engine keeps them in spec order
            for index, (sub, sub_state) in enumerate(zip(spec.rules, sub_states, strict=False)):
                walk(sub, (*path, rule_name(sub, index)), sub_state)
        elif spec.kind in TRACKED_KINDS:
            leaves.append((path, state))

    for index, spec in enumerate(rules.rules):
        name = rule_name(spec, index)
        if name in states:
            walk(spec, (name,), states[name])
    names = [path[-1] for path, _ in leaves]
    readings = []
    for path, state in leaves:
        kind = state.get("kind")
        wait = {"decline": state.get("wait"), "slope": state.get("bad")}.get(str(kind))
        readings.append(
            RuleReading(
                rule=path[-1] if names.count(path[-1]) == 1 else "/".join(path),
                value=state.get("smoothed"),
                best=state.get("best"),
                wait=None if kind == "threshold" else int(wait or 0),
                has_best=kind == "decline",
            )
        )
    return readings
