"""``check`` warns when exact class mode's class sums would pass ``stiffness.memory_limit``
and suggests projection mode; the digits example's real config, model and probe."""

from __future__ import annotations

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
    projected = {"memory_limit": 1000, "projection": {"dim": 64}}
    assert warnings_for(tmp_path, "projected", **projected) == []
    assert warnings_for(tmp_path, "pair", memory_limit=1000, mode="pair") == []
