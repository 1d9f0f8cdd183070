"""``check`` warns when class mode's class sums would pass ``stiffness.memory_limit``: exact
ones suggest projection mode, projected ones ``total_dim``; the digits example's real
config, model and probe."""

from __future__ import annotations

import math
from pathlib import Path

from monitor.daemon.checks import run_checks
from tests.daemon_harness import make_config

P, CLASSES = 8_970, 10  # examples/digits build_mlp(); the probe's ten digits
NEED = CLASSES * P * 8  # one float64 sum of P values per class


def warnings_for(tmp_path: Path, name: str, **stiffness: object) -> list[str]:
    run = tmp_path / name / "run"
    run.mkdir(parents=True)
    config = make_config(tmp_path / name, {"digits": run}, stiffness={"device": "cpu", **stiffness})
    report = run_checks(config)
    assert report.problems == []
    return [w for w in report.warnings if "memory_limit" in w]


def test_warns_when_exact_class_sums_pass_the_limit(tmp_path: Path) -> None:
    found = warnings_for(tmp_path, "small", memory_limit=NEED - 1)
    assert len(found) == 1
    assert f"{CLASSES} classes x {P:,} parameters" in found[0]
    assert "stiffness.projection" in found[0] and "config.yaml" in found[0]


def test_silent_when_it_fits_or_projection_or_pair_mode(tmp_path: Path) -> None:
    assert warnings_for(tmp_path, "fits", memory_limit=NEED) == []
    assert warnings_for(tmp_path, "none") == []
    assert warnings_for(tmp_path, "pair", memory_limit=1000, mode="pair") == []


def test_projected_class_sums_warn_and_suggest_total_dim(tmp_path: Path) -> None:
    """digits' MLP at dim 64: K = 64 per tensor of more than 64 values, the rest kept."""
    shapes = [(64, 64), (64,), (64, 64), (64,), (10, 64), (10,)]  # build_mlp()
    assert sum(math.prod(shape) for shape in shapes) == P
    width = sum(min(64, math.prod(shape)) for shape in shapes)
    need = CLASSES * width * 8
    projected = {"memory_limit": need - 1, "projection": {"dim": 64}}
    found = warnings_for(tmp_path, "projected", **projected)
    assert len(found) == 1 and f"{CLASSES} classes x {width:,} projected values" in found[0]
    assert "stiffness.projection.total_dim" in found[0]
    assert warnings_for(tmp_path, "fits", memory_limit=need, projection={"dim": 64}) == []
    folded = {"memory_limit": need - 1, "projection": {"dim": 64, "total_dim": 32}}
    assert warnings_for(tmp_path, "folded", **folded) == []
