"""Jackknife standard errors of within-class stiffness against a brute-force jackknife.

The brute force recomputes within-class stiffness from float64 per-example gradients (one
backward each, tests/reference.py) with each held-out example left out in turn, by plain
loops over pairs, and applies the textbook jackknife formula.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness
from monitor.stiffness.uncertainty import jackknife_within
from tests.reference import example_gradients
from tests.stiffness.test_engine import ARCHITECTURES, probe_for


def _within(
    vectors: dict[int, torch.Tensor], labels: dict[int, int], sign: bool
) -> tuple[float, float]:
    """Macro and pooled within-class stiffness over the given examples, pair by pair."""
    per_class: dict[int, list[float]] = {}
    for i, gi in vectors.items():
        for j, gj in vectors.items():
            if i == j or labels[i] != labels[j]:
                continue
            dot = float(gi @ gj)
            value = math.copysign(1.0, dot) if sign else dot / float(gi.norm() * gj.norm())
            per_class.setdefault(labels[i], []).append(value)
    means = [sum(v) / len(v) for v in per_class.values()]
    pooled = [x for v in per_class.values() for x in v]
    return sum(means) / len(means), sum(pooled) / len(pooled)


def brute_force(model: Any, probe: ProbeSet, sign: bool = False) -> tuple[float, float]:
    grads, _, _ = example_gradients(model, probe)
    held = [i for i in range(probe.size) if probe.is_train is None or not bool(probe.is_train[i])]
    labels = {i: int(probe.targets[i]) for i in held}
    estimates = []
    for left_out in held:
        vectors = {i: grads[i] for i in held if i != left_out}
        estimates.append(_within(vectors, labels, sign))
    m = len(estimates)
    spreads = []
    for k in range(2):
        values = [e[k] for e in estimates]
        mean = sum(values) / m
        spreads.append(math.sqrt((m - 1) / m * sum((v - mean) ** 2 for v in values)))
    return spreads[0], spreads[1]


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_engine_jackknife_matches_brute_force(arch: str, mode: Any) -> None:
    model, inputs = ARCHITECTURES[arch]()
    probe = probe_for(inputs[:24])
    model64 = copy.deepcopy(model).double()
    inputs64 = probe.inputs.double() if probe.inputs.is_floating_point() else probe.inputs
    probe64 = ProbeSet(inputs64, probe.targets, probe.is_train)
    result = compute_stiffness(
        model64, probe64, EngineOptions(mode=mode, batch_size=7, uncertainty=True)
    )
    macro, pooled = brute_force(model, probe)
    assert result.uncertainty["within_class"] == pytest.approx(macro, rel=1e-9)
    assert result.uncertainty["within_class_pooled"] == pytest.approx(pooled, rel=1e-9)
    if mode == "pair":
        sign_macro, _ = brute_force(model, probe, sign=True)
        assert result.uncertainty["sign_within_class"] == pytest.approx(sign_macro, rel=1e-9)


def test_class_mode_computes_uncertainty_only_when_asked() -> None:
    model, inputs = ARCHITECTURES["mlp"]()
    probe = probe_for(inputs, splits=False)
    assert compute_stiffness(model, probe).uncertainty == {}
    asked = compute_stiffness(model, probe, EngineOptions(uncertainty=True)).uncertainty
    assert asked["within_class"] is not None and asked["within_class"] > 0


def test_classes_too_small_to_leave_one_out_are_handled() -> None:
    # Two classes of two examples: leaving one out leaves a class undefined.
    t = torch.tensor([0.5, 0.5, -0.2, -0.2], dtype=torch.float64)
    rows = torch.tensor([0, 0, 1, 1])
    spread = jackknife_within(t, rows, torch.ones(4, dtype=torch.bool), 2)
    assert spread["within"] is not None and math.isfinite(spread["within"])
    single = jackknife_within(t[:1], rows[:1], torch.ones(1, dtype=torch.bool), 2)
    assert single == {"within": None, "within_pooled": None}
