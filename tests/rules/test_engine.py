"""The rule engine, Lightning style: tables of value sequences and the evaluation (counted
from 0) at which each rule must first say stop, or None when it must not."""

from __future__ import annotations

import ast
import builtins
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import ConfigError
from monitor.rules.engine import RuleEngine, RuleStateError, metric_value, replay
from monitor.rules.readings import metric_reading
from monitor.rules.spec import METRICS, RuleSet, load_rules, parse_rules

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "rules").glob("*.yaml"))

Value = float | None


def result(
    within: Value = 0.3,
    *,
    loss: Value = 1.0,
    accuracy: Value = 0.5,
    errors: dict[str, float] | None = None,
    pair_mode: bool = False,
    train: bool = False,
) -> dict[str, Any]:
    """A stored evaluation (the ``evaluate --json`` shape) with the given headline values."""

    def block(w: Value, scale: float = 1.0) -> dict[str, Any]:
        diag = [None if w is None else w * scale] * 3
        return {
            "matrix": [[diag[0], 0.1, 0.1], [0.1, diag[1], 0.1], [0.1, 0.1, diag[2]]],
            "within": None if w is None else w * scale,
            "between": 0.1 * scale,
            "within_pooled": None if w is None else w * scale,
            "between_pooled": 0.1 * scale,
            "per_class": diag,
            "pair_counts": [[2, 4, 4], [4, 2, 4], [4, 4, 2]],
        }

    pair_sets = {"train-val": {"cosine": block(within, 0.5), "sign": None}} if train else {}
    return {
        "step": None,
        "mode": "pair" if pair_mode else "class",
        "classes": [0, 1, 2],
        "probe_loss": loss,
        "probe_accuracy": accuracy,
        "train_probe_loss": 0.5 if train else None,
        "train_probe_accuracy": 0.9 if train else None,
        "cosine": block(within),
        "sign": block(within, 2.0) if pair_mode else None,
        "pair_sets": pair_sets,
        "distance": None,
        "uncertainty": dict(errors or {}),
    }


def rules(*specs: dict[str, Any]) -> RuleSet:
    return parse_rules(list(specs), "test")


def decisions(
    spec: dict[str, Any],
    values: Sequence[Value],
    steps: Sequence[int | None] | None = None,
    errors: Sequence[float | None] | None = None,
) -> list[Any]:
    """The first rule's decision at each evaluation; values go to the rule's metric."""
    metric = spec.get("metric", "within_class")
    key = {"within_class": "within", "probe_loss": "loss", "probe_accuracy": "accuracy"}[metric]
    engine = RuleEngine(rules(spec))
    steps = [1000 * i for i in range(len(values))] if steps is None else steps
    out = []
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        error = None if errors is None else errors[i]
        evaluation = result(**{key: value}, errors=None if error is None else {metric: error})
        out.append(engine.observe(step, evaluation)[0])
    return out


def first_stop(
    spec: dict[str, Any],
    values: Sequence[Value],
    steps: Sequence[int | None] | None = None,
    errors: Sequence[float | None] | None = None,
) -> int | None:
    said = [d.stop for d in decisions(spec, values, steps, errors)]
    return said.index(True) if True in said else None


def case(id: str, spec: dict[str, Any], values: Sequence[Value], stop: int | None, **kw: Any):
    return pytest.param(spec, values, kw.get("steps"), kw.get("errors"), stop, id=id)


def check(spec, values, steps, errors, stop) -> None:
    assert first_stop(spec, values, steps, errors) == stop


DECLINE = {"kind": "decline", "metric": "within_class", "patience": 1}
DECLINE_CASES = [
    case("rising-never-stops", DECLINE, [0.1, 0.2, 0.3, 0.4], None),
    case("patience-1", DECLINE, [0.5, 0.4], 1),
    case("patience-3", {**DECLINE, "patience": 3}, [0.5, 0.4, 0.3, 0.2, 0.1], 3),
    case("new-best-resets", {**DECLINE, "patience": 3}, [0.5, 0.4, 0.3, 0.6, 0.5, 0.4, 0.3], 6),
    case("tie-is-no-fall", DECLINE, [0.5, 0.5, 0.5], None),
    case("within-abs-min-delta", {**DECLINE, "min_delta": 0.1}, [0.5, 0.45, 0.41], None),
    case("beyond-abs-min-delta", {**DECLINE, "min_delta": 0.1}, [0.5, 0.45, 0.35], 2),
    case(
        "tolerance-breaks-the-streak",
        {**DECLINE, "min_delta": 0.1, "patience": 2},
        [0.5, 0.3, 0.45, 0.3, 0.3],
        4,
    ),
    case("abs-min-delta-on-large-values", {**DECLINE, "min_delta": 0.1}, [2.0, 1.85, 1.75], 1),
    case(
        "relative-min-delta",
        {**DECLINE, "min_delta": 0.1, "relative": True},
        [2.0, 1.85, 1.75],
        2,
    ),
    case(
        "min-loss-rises",
        {**DECLINE, "metric": "probe_loss", "mode": "min", "patience": 2},
        [1.0, 0.8, 0.9, 1.0],
        3,
    ),
    case(
        "min-new-best-resets",
        {**DECLINE, "metric": "probe_loss", "mode": "min", "patience": 2},
        [1.0, 1.1, 0.9, 1.0, 1.1],
        4,
    ),
    case(
        "min-falling-loss-never-stops",
        {**DECLINE, "metric": "probe_loss", "mode": "min"},
        [1.0, 0.9, 0.8],
        None,
    ),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), DECLINE_CASES)
def test_decline(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


SLOPE = {"kind": "slope", "metric": "within_class", "window": 3, "patience": 1}
UNEVEN = [0, 100, 200, 5000, 10000]
UNEVEN_VALUES = [0.5, 0.49, 0.48, 0.38, 0.28]  # -0.02 per 1000 steps, -0.055 per evaluation
SLOPE_CASES = [
    case("rising", SLOPE, [0.1, 0.2, 0.3, 0.4, 0.5], None),
    case("falling-first-full-window", SLOPE, [0.5, 0.4, 0.3, 0.2], 2),
    case("falling-patience-2", {**SLOPE, "patience": 2}, [0.5, 0.4, 0.3, 0.2], 3),
    case(
        "rise-in-between-resets-patience",
        {**SLOPE, "patience": 2},
        [0.5, 0.4, 0.3, 0.6, 0.9, 0.8, 0.7, 0.6],
        7,
    ),
    case("noisy-flat-tolerated", {**SLOPE, "threshold": -0.05}, [0.5, 0.51, 0.49] * 3, None),
    case("noisy-flat-strict", {**SLOPE, "threshold": 0.0}, [0.5, 0.51, 0.49] * 3, 2),
    case("plateau-positive-threshold", {**SLOPE, "threshold": 0.01}, [0.5] * 4, 2),
    case("slow-fall-tolerated", {**SLOPE, "threshold": -0.01}, [0.5, 0.499, 0.498, 0.497], None),
    case("fast-fall-not-tolerated", {**SLOPE, "threshold": -0.01}, [0.5, 0.45, 0.4], 2),
    case("min-loss-rising", {**SLOPE, "metric": "probe_loss", "mode": "min"}, [1.0, 1.1, 1.2], 2),
    case(
        "min-loss-falling", {**SLOPE, "metric": "probe_loss", "mode": "min"}, [1.2, 1.1, 1.0], None
    ),
    case(
        "min-slow-rise-tolerated",
        {**SLOPE, "metric": "probe_loss", "mode": "min", "threshold": -0.05},
        [1.0, 1.01, 1.02],
        None,
    ),
    case(
        "per-1000-steps-uneven",
        {**SLOPE, "window": 5, "threshold": -0.03},
        UNEVEN_VALUES,
        None,
        steps=UNEVEN,
    ),
    case(
        "steps-unknown-per-evaluation",
        {**SLOPE, "window": 5, "threshold": -0.03},
        UNEVEN_VALUES,
        4,
        steps=[None] * 5,
    ),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), SLOPE_CASES)
def test_slope(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


def test_slope_is_least_squares_per_1000_steps() -> None:
    said = decisions({**SLOPE, "window": 5}, UNEVEN_VALUES, steps=UNEVEN)[-1]
    expected = np.polyfit(np.array(UNEVEN) / 1000, UNEVEN_VALUES, 1)[0]
    assert said.state["slope"] == pytest.approx(expected)
    assert f"{expected:+.4g} per 1000 steps" in said.reason


THRESHOLD_CASES = [
    case(
        "max-stopping-inclusive",
        {"kind": "threshold", "metric": "probe_accuracy", "stopping_threshold": 0.95},
        [0.5, 0.8, 0.95, 0.99],
        2,
    ),
    case(
        "max-divergence",
        {"kind": "threshold", "metric": "within_class", "divergence_threshold": 0.05},
        [0.3, 0.2, 0.05],
        2,
    ),
    case(
        "min-stopping",
        {"kind": "threshold", "metric": "probe_loss", "mode": "min", "stopping_threshold": 0.1},
        [1.0, 0.5, 0.1],
        2,
    ),
    case(
        "min-divergence",
        {"kind": "threshold", "metric": "probe_loss", "mode": "min", "divergence_threshold": 10},
        [1.0, 2.0, 12.0],
        2,
    ),
    case(
        "inside-both-bounds",
        {
            "kind": "threshold",
            "metric": "probe_loss",
            "mode": "min",
            "stopping_threshold": 0.1,
            "divergence_threshold": 10,
        },
        [1.0, 2.0, 0.5],
        None,
    ),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), THRESHOLD_CASES)
def test_threshold(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


SMOOTH = {**DECLINE, "min_delta": 0.16}
SMOOTHING_CASES = [
    case("spike-raw-stops", SMOOTH, [0.5, 0.3, 0.5, 0.5], 1),
    case(
        "spike-ema-absorbs",
        {**SMOOTH, "smoothing": {"kind": "ema", "alpha": 0.5}},
        [0.5, 0.3, 0.5, 0.5],
        None,
    ),
    case(
        "spike-median-absorbs",
        {**SMOOTH, "smoothing": {"kind": "median", "window": 3}},
        [0.5, 0.3, 0.5, 0.5],
        None,
    ),
    case("fall-raw", SMOOTH, [0.5, 0.5, 0.2, 0.2, 0.2], 2),
    case(
        "fall-ema-later",
        {**SMOOTH, "smoothing": {"kind": "ema", "alpha": 0.5}},
        [0.5, 0.5, 0.2, 0.2, 0.2],
        3,
    ),
    case(
        "fall-median-later",
        {**SMOOTH, "smoothing": {"kind": "median", "window": 3}},
        [0.5, 0.5, 0.2, 0.2, 0.2],
        3,
    ),
    case(
        "slope-median-ignores-outlier",
        {**SLOPE, "window": 3, "smoothing": {"kind": "median", "window": 3}},
        [0.1, 0.2, 0.3, 0.0, 0.5, 0.6],
        None,
    ),
    case("slope-raw-sees-outlier", {**SLOPE, "window": 3}, [0.1, 0.2, 0.3, 0.0, 0.5, 0.6], 3),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), SMOOTHING_CASES)
def test_smoothing(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


FALLING = [0.5, 0.4, 0.3, 0.2, 0.1]
WARMUP_CASES = [
    case("no-warm-up", DECLINE, FALLING, 1),
    case("min-step", {**DECLINE, "min_step": 2000}, FALLING, 2),
    case(
        "min-step-ignored-without-steps",
        {**DECLINE, "min_step": 2000},
        FALLING,
        1,
        steps=[None] * 5,
    ),
    case("min-evaluations", {**DECLINE, "min_evaluations": 4}, FALLING, 3),
    case(
        "min-evaluations-count-values", {**DECLINE, "min_evaluations": 3}, [0.5, None, 0.4, 0.3], 3
    ),
    case(
        "patience-counted-during-warm-up",
        {**DECLINE, "patience": 2, "min_evaluations": 4},
        FALLING,
        3,
    ),
    case("slope-min-step", {**SLOPE, "min_step": 4000}, FALLING, 4),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), WARMUP_CASES)
def test_warm_up(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


SIGMA_DECLINE = {**DECLINE, "min_sigma": 2.0}
SIGMA_SLOPE = {**SLOPE, "min_sigma": 2.0}  # falls 0.01 per 1000 steps: 0.02 over the window
SIGMA_CASES = [
    case("decline-beyond-noise", SIGMA_DECLINE, [0.5, 0.47], 1, errors=[0.01, 0.01]),
    case("decline-within-noise", SIGMA_DECLINE, [0.5, 0.47], None, errors=[0.02, 0.02]),
    case("decline-no-uncertainty", SIGMA_DECLINE, [0.5, 0.47], 1),
    case("slope-beyond-noise", SIGMA_SLOPE, [0.5, 0.49, 0.48], 2, errors=[0.005] * 3),
    case("slope-within-noise", SIGMA_SLOPE, [0.5, 0.49, 0.48], None, errors=[0.02] * 3),
    case("slope-no-uncertainty", SIGMA_SLOPE, [0.5, 0.49, 0.48], 2),
]


@pytest.mark.parametrize(("spec", "values", "steps", "errors", "stop"), SIGMA_CASES)
def test_min_sigma(spec, values, steps, errors, stop) -> None:
    check(spec, values, steps, errors, stop)


def test_min_sigma_without_uncertainty_says_so() -> None:
    said = decisions(SIGMA_DECLINE, [0.5, 0.47])[-1]
    assert "min_sigma was not applied" in said.reason


def _combined(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "rules": [
            {"kind": "threshold", "metric": "probe_accuracy", "stopping_threshold": 0.9},
            {"kind": "threshold", "metric": "probe_loss", "mode": "min", "stopping_threshold": 0.2},
        ],
    }


@pytest.mark.parametrize(
    ("kind", "history", "stop"),
    [
        pytest.param("all", [(0.5, 1.0), (0.95, 0.5), (0.95, 0.1)], 2, id="all-when-both"),
        pytest.param("all", [(0.95, 0.5), (0.5, 0.1), (0.5, 0.5)], None, id="all-not-apart"),
        pytest.param("any", [(0.5, 1.0), (0.5, 0.1)], 1, id="any-when-one"),
        pytest.param("any", [(0.5, 1.0), (0.6, 0.9)], None, id="any-when-none"),
    ],
)
def test_combinators(kind: str, history: list[tuple[float, float]], stop: int | None) -> None:
    engine = RuleEngine(rules(_combined(kind)))
    said = [
        engine.observe(i, result(accuracy=a, loss=b))[0].stop for i, (a, b) in enumerate(history)
    ]
    assert (said.index(True) if True in said else None) == stop


def test_combinator_state_nests_sub_rules() -> None:
    engine = RuleEngine(
        rules({"kind": "all", "rules": [DECLINE, {"kind": "any", "rules": [SLOPE]}]})
    )
    engine.observe(0, result(0.5))
    state = engine.state()["all-0"]
    assert [sub["kind"] for sub in state["rules"]] == ["decline", "any"]
    assert state["rules"][1]["rules"][0]["kind"] == "slope"
    assert state["rules"][0]["best"] == 0.5


@pytest.mark.parametrize(
    ("values", "stop"),
    [
        pytest.param([0.5, float("nan")], 1, id="nan-in-memory"),
        pytest.param([0.5, float("inf")], 1, id="inf-in-memory"),
        pytest.param([0.5, None], 1, id="null-where-measured"),
        pytest.param([0.5, 0.4, 0.3], None, id="finite"),
    ],
)
def test_non_finite(values: list[Value], stop: int | None) -> None:
    check({"kind": "non_finite", "metrics": ["within_class"]}, values, None, None, stop)


def test_non_finite_probe_loss_and_min_step() -> None:
    engine = RuleEngine(rules({"kind": "non_finite", "metrics": ["probe_loss"], "min_step": 500}))
    assert not engine.observe(100, result(loss=None))[0].stop
    said = engine.observe(600, result(loss=None))[0]
    assert said.stop and "probe_loss" in said.reason and "step 600" in said.reason


def test_non_finite_ignores_metrics_this_mode_does_not_measure() -> None:
    spec = {
        "kind": "non_finite",
        "metrics": ["sign_within_class", "train_val_within_class", "critical_length"],
    }
    engine = RuleEngine(rules(spec))
    assert not engine.observe(0, result())[0].stop  # class mode, no training split, no distance
    assert engine.observe(1, result(None, pair_mode=True))[0].stop  # sign measured, null


def test_missing_values_are_skipped_with_a_reason() -> None:
    said = decisions({**DECLINE, "metric": "within_class", "patience": 2}, [0.5, 0.4, None, 0.3])
    assert [d.stop for d in said] == [False, False, False, True]
    assert "No value for within_class" in said[2].reason
    engine = RuleEngine(rules({**DECLINE, "metric": "sign_within_class"}))
    for step in range(3):
        decision = engine.observe(step, result())[0]
        assert not decision.stop
        assert "No value for sign_within_class (class mode?)" in decision.reason


def test_a_stop_is_never_retracted() -> None:
    spec = {"kind": "threshold", "metric": "probe_accuracy", "stopping_threshold": 0.9}
    engine = RuleEngine(rules(spec))
    said = [engine.observe(1000 * i, result(accuracy=a))[0] for i, a in enumerate([0.5, 0.95, 0.5])]
    assert [d.stop for d in said] == [False, True, True]
    assert said[2].reason.startswith("Stopped since step 1000")
    assert "never retracted" in said[2].reason and "has not reached" in said[2].reason
    assert said[2].state["stopped"]["index"] == 1
    assert engine.stopped["threshold-0"].step == 1000


def test_reasons_are_sentences_with_numbers() -> None:
    spec = {**DECLINE, "patience": 3}
    said = decisions(spec, [0.3, 0.412, 0.381, 0.381, 0.381], steps=[0, 1200, 1300, 1400, 1500])
    assert said[-1].reason == (
        "within_class (raw) fell 0.031 below its best 0.412 (step 1200) for 3 evaluations "
        "(patience 3)."
    )
    ema = decisions({**spec, "smoothing": {"kind": "ema", "alpha": 0.5}}, [0.3, 0.2])[-1]
    assert ema.reason.startswith("within_class (EMA α=0.5) is 0.05 below its best 0.3 (step 0)")


def test_decision_names_and_every_rule_decides() -> None:
    rule_set = rules(DECLINE, {**SLOPE, "name": "trend"}, {"kind": "non_finite"})
    said = RuleEngine(rule_set).observe(0, result())
    assert [d.rule for d in said] == ["decline-0", "trend", "non_finite-2"]
    with pytest.raises(ConfigError, match="duplicates \\['x'\\]"):  # refused when parsed
        rules({**DECLINE, "name": "x"}, {**SLOPE, "name": "x"})


# -- state -------------------------------------------------------------------------------

ROUND_TRIP = rules(
    {
        **DECLINE,
        "patience": 2,
        "min_delta": 0.05,
        "relative": True,
        "min_sigma": 1.0,
        "smoothing": {"kind": "ema", "alpha": 0.4},
        "min_evaluations": 2,
    },
    {
        **SLOPE,
        "window": 4,
        "patience": 2,
        "smoothing": {"kind": "median", "window": 3},
        "min_sigma": 0.5,
    },
    {"kind": "threshold", "metric": "probe_loss", "mode": "min", "divergence_threshold": 3.0},
    {"kind": "non_finite", "min_step": 2},
    {
        "kind": "any",
        "rules": [
            {"kind": "all", "rules": [DECLINE, SLOPE]},
            {"kind": "decline", "metric": "probe_loss", "mode": "min"},
        ],
    },
)
values = st.one_of(st.none(), st.floats(-1, 1, allow_nan=False, width=32))
histories = st.lists(
    st.tuples(values, st.floats(0, 4, width=32), st.one_of(st.none(), st.floats(0, 0.1))),
    min_size=1,
    max_size=25,
)


def _evaluations(history: list[tuple[Value, float, float | None]]) -> list[tuple[int, Any]]:
    out = []
    for i, (within, loss, error) in enumerate(history):
        errors = None if error is None else {"within_class": error}
        step = 1000 * i if i % 4 else None  # some steps unknown
        out.append((step, result(within, loss=loss, errors=errors)))
    return out


@settings(max_examples=150, deadline=None)
@given(history=histories, cut=st.integers(0, 25))
def test_state_round_trip_matches_an_uninterrupted_run(history, cut) -> None:
    evaluations = _evaluations(history)
    cut = min(cut, len(evaluations))
    straight = RuleEngine(ROUND_TRIP)
    expected = [straight.observe(step, r) for step, r in evaluations]

    first = RuleEngine(ROUND_TRIP)
    got = [first.observe(step, r) for step, r in evaluations[:cut]]
    saved = json.loads(json.dumps(first.state(), allow_nan=False))
    second = RuleEngine(ROUND_TRIP)
    assert second.restore(saved) == []
    got += [second.observe(step, r) for step, r in evaluations[cut:]]
    assert got == expected
    json.dumps([d.state for ds in got for d in ds], allow_nan=False)


def test_restore_refuses_state_of_an_edited_rule() -> None:
    engine = RuleEngine(rules({**DECLINE, "name": "r"}))
    engine.observe(0, result())
    edited = RuleEngine(rules({**DECLINE, "name": "r", "patience": 5}))
    with pytest.raises(RuleStateError, match="'r'"):
        edited.restore(engine.state())
    corrupt = {"r": {**engine.state()["r"], "wait": "many"}}
    with pytest.raises(RuleStateError, match="does not fit"):
        RuleEngine(rules({**DECLINE, "name": "r"})).restore(corrupt)


def test_restore_reports_rules_without_state() -> None:
    old = RuleEngine(rules({**DECLINE, "name": "a"}))
    old.observe(0, result())
    new = RuleEngine(rules({**DECLINE, "name": "a"}, {**SLOPE, "name": "b"}))
    assert new.restore({**old.state(), "gone": {}}) == ["b"]


# -- replay and shipped rule sets --------------------------------------------------------


def test_replay_reports_the_first_stop() -> None:
    rule_set = rules(
        {**DECLINE, "name": "late", "patience": 3},
        {
            "kind": "threshold",
            "name": "goal",
            "metric": "probe_accuracy",
            "stopping_threshold": 0.9,
        },
    )
    pairs = [(0.5, 0.5), (0.4, 0.6), (0.3, 0.95), (0.2, 0.96), (0.1, 0.97)]
    history = [(100 * i, result(w, accuracy=a)) for i, (w, a) in enumerate(pairs)]
    replayed = replay(rule_set, history)
    assert replayed.evaluations == 5
    assert replayed.stop is not None
    assert (replayed.stop.index, replayed.stop.step, replayed.stop.rule) == (2, 200, "goal")
    assert replayed.stops["late"].index == 3
    assert "stopping threshold 0.9" in replayed.stop.reason
    assert replay(rule_set, history[:2]).stop is None
    resumed = RuleEngine(rule_set)
    resumed.restore(replayed.states)
    assert resumed.observe(500, result(0.1))[0].reason.startswith("Still stopping (since step 300)")


def _synthetic_history() -> list[tuple[int | None, dict[str, Any]]]:
    """Stiffness rising, peaking, then falling while the loss turns, then a diverged run."""
    out: list[tuple[int | None, dict[str, Any]]] = []
    for i in range(30):
        within = 0.5 - 0.002 * (i - 8) ** 2
        loss = 1.0 + 0.003 * (i - 15) ** 2
        out.append((500 * i, result(within, loss=loss, errors={"within_class": 0.005})))
    diverged = result(None, loss=None, accuracy=None, train=True)
    diverged["train_probe_loss"] = None  # the validation-free set's guard reads this one
    out.append((15000, diverged))
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_rule_set_runs(path: Path) -> None:
    rule_set = load_rules(path, Path("config.yaml"))
    replayed = replay(rule_set, _synthetic_history())
    assert replayed.evaluations == 31
    assert replayed.stop is not None  # the divergence at the end stops every sensible set
    json.dumps(dict(replayed.states), allow_nan=False)


def test_default_rules_without_statistics_are_the_baseline() -> None:
    replayed = replay(load_rules(None, Path("config.yaml")), _synthetic_history())
    # No gradient statistics here: the disparity sub-rule is left out, and the probe loss
    # (lowest at index 15) has had no new best for 3 evaluations at index 18.
    assert replayed.stops["disparity-rising-and-loss-stalled"].step == 500 * 18
    assert replayed.stops["diverged"].index == 30


# -- metrics -----------------------------------------------------------------------------


def test_metric_value_reads_every_metric_from_a_real_result() -> None:
    from monitor.stiffness.result import (
        ClassStiffness,
        Counts,
        DistanceProfile,
        PairSetStiffness,
        StiffnessResult,
    )
    from monitor.stiffness.statistics_result import GradientStatistics

    def block(base: float) -> ClassStiffness:
        sums = [[base * 2, base, 0.0], [base, base * 4, 0.0], [0.0, 0.0, base * 6]]
        counts = [[2, 4, 4], [4, 2, 4], [4, 4, 2]]
        return ClassStiffness.from_sums(sums, counts)

    stored = StiffnessResult(
        mode="pair",
        classes=(3, 5, 7),
        probe_loss=1.25,
        probe_accuracy=0.5,
        train_probe_loss=0.75,
        train_probe_accuracy=0.9,
        cosine=block(0.1),
        sign=block(0.3),
        pair_sets={
            "train-val": PairSetStiffness(block(0.2), block(0.4)),
            "train-train": PairSetStiffness(block(0.15), block(0.3)),
        },
        distance=DistanceProfile((0.0, 1.0), (0.1,), (0.0,), (1,), (1,), 0.625),
        counts=Counts(6, (2, 2, 2), 0, 3, 10),
        gradient_norms=(1.0,) * 6,
        uncertainty={"within_class": 0.01},
        statistics=GradientStatistics(0.5, 2.5, 0.25, 10, 0.125, 3, (2, 1)),
    ).to_dict()
    expected = {
        "within_class": stored["cosine"]["within"],
        "between_class": stored["cosine"]["between"],
        "within_class_pooled": stored["cosine"]["within_pooled"],
        "between_class_pooled": stored["cosine"]["between_pooled"],
        "sign_within_class": stored["sign"]["within"],
        "sign_between_class": stored["sign"]["between"],
        "sign_within_class_pooled": stored["sign"]["within_pooled"],
        "train_val_within_class": stored["pair_sets"]["train-val"]["cosine"]["within"],
        "train_val_between_class": stored["pair_sets"]["train-val"]["cosine"]["between"],
        "train_val_sign_within_class": stored["pair_sets"]["train-val"]["sign"]["within"],
        "train_val_sign_between_class": stored["pair_sets"]["train-val"]["sign"]["between"],
        "probe_loss": 1.25,
        "probe_accuracy": 0.5,
        "train_probe_loss": 0.75,
        "train_probe_accuracy": 0.9,
        "train_train_within_class": stored["pair_sets"]["train-train"]["cosine"]["within"],
        "train_train_between_class": stored["pair_sets"]["train-train"]["cosine"]["between"],
        "train_val_loss_gap": 0.75 - 1.25,
        "critical_length": 0.625,
        "gradient_disparity": 0.5,
        "gsnr": 2.5,
        "gsnr_median": 0.25,
        "opposing_share": 0.125,
    }
    assert set(expected) == METRICS
    for metric, value in expected.items():
        assert metric_value(stored, metric) == pytest.approx(value), metric
        assert value is not None
    assert metric_value(stored, "class_within:5") == pytest.approx(0.2)  # sum 0.4 over 2 pairs
    assert metric_value(stored, "class_within:4") is None
    assert metric_value(stored, "no_such_metric") is None


def test_metric_reading_tells_unmeasured_from_non_finite() -> None:
    plain = result(loss=None)
    assert not metric_reading(plain, "sign_within_class").non_finite
    assert not metric_reading(plain, "train_probe_loss").non_finite
    assert metric_reading(plain, "probe_loss").non_finite
    assert math.isnan(metric_value(result(float("nan")), "within_class") or 0.0)
    assert metric_value(result(train=True), "train_val_within_class") == pytest.approx(0.15)


# -- purity ------------------------------------------------------------------------------

PURE_IMPORTS = {
    "__future__",
    "abc",
    "collections.abc",
    "dataclasses",
    "typing",
    "math",
    "statistics",
    "hashlib",
    "json",
    "monitor.rules.spec",
    "monitor.rules.readings",
    "monitor.rules.kinds",
    "monitor.rules.trends",
}


@pytest.mark.parametrize("module", ["engine", "kinds", "trends", "readings"])
def test_engine_modules_import_nothing_that_does_io(module: str) -> None:
    tree = ast.parse((REPO / "monitor" / "rules" / f"{module}.py").read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported <= PURE_IMPORTS


def test_engine_touches_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    rule_set = load_rules(None, Path("config.yaml"))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the rule engine opened a file")

    monkeypatch.setattr(builtins, "open", refuse)
    assert replay(rule_set, _synthetic_history()).evaluations == 31
