"""The result values: summaries from sums on a hand-computed case, and the JSON round trip
that the store and ``evaluate --json`` rely on, for a real engine result."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from monitor.stiffness import (
    ClassStiffness,
    EngineOptions,
    ProbeSet,
    StiffnessResult,
    compute_stiffness,
)
from monitor.stiffness.inputs import Mode


def test_from_sums_on_a_hand_computed_two_class_case() -> None:
    # Cell (0,0): 2 pairs summing to 0.6; (0,1): 4 pairs, -0.4; (1,0): 2 pairs, 0.2;
    # (1,1): no pair (a class with a single usable example).
    result = ClassStiffness.from_sums([[0.6, -0.4], [0.2, 1.0]], [[2, 4], [2, 0]])
    (c00, c01), (c10, c11) = result.matrix
    assert (c00, c01, c10) == pytest.approx((0.3, -0.1, 0.1))
    assert c11 is None  # undefined, not NaN
    assert result.per_class[0] == pytest.approx(0.3) and result.per_class[1] is None
    assert result.within == pytest.approx(0.3)  # mean of the defined diagonal
    assert result.between == pytest.approx(0.0)  # (-0.1 + 0.1) / 2: classes count equally
    assert result.within_pooled == pytest.approx(0.3)
    assert result.between_pooled == pytest.approx(-0.2 / 6)  # pairs count equally
    assert result.pair_counts == ((2, 4), (2, 0))


def test_from_sums_never_yields_nan() -> None:
    result = ClassStiffness.from_sums([[math.nan, 0.0], [0.0, 0.0]], [[2, 0], [0, 0]])
    assert result.matrix == ((None, None), (None, None))
    assert result.within is None and result.between is None


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_engine_result_round_trips_through_strict_json(mode: Mode) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    inputs = torch.randn(24, 5)
    inputs[0] = 0.0  # no input direction: left out of the distance profile
    probe = ProbeSet(inputs, torch.arange(24) % 3, is_train=torch.arange(24) % 4 == 0)
    options = EngineOptions(mode=mode, batch_size=5, distance_bins=6)
    result = compute_stiffness(model, probe, options)
    text = json.dumps(result.to_dict(), allow_nan=False)
    again = StiffnessResult.from_dict(json.loads(text))
    assert again == result
    assert again.to_dict() == result.to_dict()
    assert set(again.pair_sets) == {"train-val", "train-train"}
    assert (again.distance is not None) == (mode == "pair")
