"""``all`` with ``skip_unmeasured``, the training-split metrics issue 15 added, and the shipped
default that uses both: with gradient statistics it waits for the disparity, without them it
is exactly the probe-loss baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from monitor.daemon.checks import run_checks
from monitor.errors import ConfigError
from monitor.report.panels import choose_panels
from monitor.rules.best import BestTracker, best_spec
from monitor.rules.engine import RuleEngine, replay
from monitor.rules.readings import metric_reading
from monitor.rules.spec import load_rules, parse_rules, rule_metrics

REPO = Path(__file__).resolve().parents[2]
DEFAULT = load_rules(REPO / "rules" / "default.yaml", REPO / "rules" / "default.yaml")
BASELINE = load_rules(
    REPO / "rules" / "probe_loss_patience.yaml", REPO / "rules" / "probe_loss_patience.yaml"
)
FREE = load_rules(REPO / "rules" / "validation_free.yaml", REPO / "rules" / "validation_free.yaml")


def evaluation(
    loss: float | None,
    disparity: float | None = None,
    statistics: bool = True,
    train_loss: float | None = 0.4,
    split: bool = True,
) -> dict[str, Any]:
    """A stored evaluation with a held-out loss, and (with ``split``) a training split."""
    block = {"within": 0.3, "between": 0.1, "within_pooled": 0.3, "between_pooled": 0.1}
    found: dict[str, Any] = {
        "classes": [0, 1],
        "probe_loss": loss,
        "probe_accuracy": 0.5,
        "cosine": dict(block),
        "train_probe_loss": train_loss if split else None,
        "train_probe_accuracy": 0.9 if split else None,
        "pair_sets": {"train-val": {"cosine": dict(block)},
                      "train-train": {"cosine": {**block, "within": 0.25, "between": 0.05}}}
        if split else {},
        "statistics": {"gradient_disparity": disparity, "gsnr": 0.01, "gsnr_median": 0.01,
                       "opposing_share": 0.0} if statistics and split else None,
    }  # fmt: skip
    return found


def both_rule(skip: bool) -> Any:
    return parse_rules(
        [{"kind": "all", "skip_unmeasured": skip, "rules": [
            {"kind": "decline", "metric": "gradient_disparity", "mode": "min", "patience": 2},
            {"kind": "decline", "metric": "probe_loss", "mode": "min", "patience": 2}]}],
        "test",
    )  # fmt: skip


def stops(rule_set: Any, evaluations: list[dict[str, Any]]) -> int | None:
    result = replay(rule_set, ((100 * (i + 1), e) for i, e in enumerate(evaluations)))
    return None if result.stop is None else result.stop.index


LOSSES = [1.0, 0.8, 0.9, 0.95, 0.97, 0.99]  # no new best after index 1: patience 2 at index 3


def test_an_unmeasured_sub_rule_is_left_out_only_when_asked() -> None:
    unmeasured = [evaluation(loss, statistics=False) for loss in LOSSES]
    assert stops(both_rule(skip=True), unmeasured) == 3  # the loss alone decides
    assert stops(both_rule(skip=False), unmeasured) is None  # all must: one never can
    decision = RuleEngine(both_rule(skip=True)).observe(100, unmeasured[0])[0]
    assert "1 left out as not measured" in decision.reason


def test_a_measured_sub_rule_still_has_its_say() -> None:
    falling = [evaluation(loss, d) for loss, d in zip(LOSSES, [5, 4, 3, 2, 1, 0], strict=True)]
    assert stops(both_rule(skip=True), falling) is None  # disparity keeps improving
    rising = [evaluation(loss, d) for loss, d in zip(LOSSES, [5, 4, 4.5, 5, 6, 7], strict=True)]
    assert stops(both_rule(skip=True), rising) == 3


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        pytest.param({"kind": "any", "skip_unmeasured": True}, "unknown key", id="on-any"),
        pytest.param({"kind": "all", "skip_unmeasured": "maybe"}, "expected true or false",
                     id="not-a-bool"),
    ],
)  # fmt: skip
def test_a_misused_skip_unmeasured_is_a_config_error(rule: dict[str, Any], fragment: str) -> None:
    loss = {"kind": "decline", "metric": "probe_loss", "mode": "min"}
    with pytest.raises(ConfigError, match=fragment) as caught:
        parse_rules([{**rule, "rules": [loss]}], "rules.yaml")
    assert "rules.yaml: rules[0].skip_unmeasured" in str(caught.value)


def test_with_nothing_measured_an_all_never_stops() -> None:
    only = parse_rules(
        [{"kind": "all", "skip_unmeasured": True, "rules": [
            {"kind": "decline", "metric": "gradient_disparity", "mode": "min", "patience": 1}]}],
        "test",
    )  # fmt: skip
    assert stops(only, [evaluation(loss, statistics=False) for loss in LOSSES]) is None


def test_a_non_finite_value_is_measured_not_skipped() -> None:
    # A held-out loss stored as null (NaN when measured) is not "unmeasured": the loss rule
    # skips that evaluation and says go on, and so does the whole ``all``.
    broken = [evaluation(None, 1.0) for _ in range(4)]
    reading = metric_reading(broken[0], "probe_loss")
    assert reading.value is None and reading.expected
    assert stops(both_rule(skip=True), broken) is None


@pytest.mark.parametrize("seed", range(12))
def test_the_default_without_statistics_is_the_baseline(seed: int) -> None:
    rng = np.random.default_rng(seed)
    losses = np.minimum.accumulate(2.0 - rng.random(40).cumsum() / 20) + rng.random(40) * 0.3
    for split in (True, False):
        plain = [evaluation(float(v), statistics=False, split=split) for v in losses]
        assert stops(DEFAULT, plain) == stops(BASELINE, plain)
    # With a disparity that never rises, the default waits for it; the baseline does not.
    steady = [evaluation(float(v), 10.0 - i) for i, v in enumerate(losses)]
    assert stops(DEFAULT, steady) is None
    # Rising from the first evaluation: 5 evaluations above its lowest at index 5, so the
    # default stops at the first index from 5 on where the loss rule alone says stop.
    rising = [evaluation(float(v), float(i)) for i, v in enumerate(losses)]
    engine = RuleEngine(BASELINE)
    loss_says = [engine.observe(100 * (i + 1), e)[0].stop for i, e in enumerate(rising)]
    expected = next((i for i, says in enumerate(loss_says) if says and i >= 5), None)
    assert stops(DEFAULT, rising) == expected
    if seed == 11:  # the loss alone says stop at 3, before the disparity's patience is up
        assert (stops(DEFAULT, rising), stops(BASELINE, rising)) == (5, 3)


def test_the_training_split_metrics_read_their_fields() -> None:
    found = evaluation(1.25, 0.5, train_loss=0.75)
    assert metric_reading(found, "train_train_within_class").value == 0.25
    assert metric_reading(found, "train_train_between_class").value == 0.05
    assert metric_reading(found, "train_val_loss_gap").value == pytest.approx(-0.5)
    without = evaluation(1.25, split=False)
    for metric in ("train_train_within_class", "train_val_loss_gap"):
        reading = metric_reading(without, metric)
        assert reading.value is None and not reading.expected  # not measured, not non-finite
    broken = evaluation(1.25, train_loss=None)
    gap = metric_reading(broken, "train_val_loss_gap")
    assert gap.value is None and gap.non_finite  # measured, and stored as null: NaN or inf


def test_the_validation_free_set_reads_no_held_out_label() -> None:
    held_out = {"probe_loss", "probe_accuracy", "within_class", "between_class"}
    assert not rule_metrics(FREE) & held_out
    assert rule_metrics(FREE) == {"gradient_disparity"}
    # Its guard too: the non_finite metrics are training-split ones.
    guard = [r for r in FREE.rules if r.kind == "non_finite"]
    assert guard and set(guard[0].metrics) <= {"train_probe_loss", "train_train_within_class"}


def test_each_shipped_set_keeps_a_best_checkpoint_it_can_read() -> None:
    assert (best_spec(DEFAULT).metric, best_spec(DEFAULT).mode) == ("probe_loss", "min")
    assert (best_spec(BASELINE).metric, best_spec(BASELINE).mode) == ("probe_loss", "min")
    # Validation-free: no held-out metric, so the training split's loss.
    assert (best_spec(FREE).metric, best_spec(FREE).mode) == ("train_probe_loss", "min")
    plain = [evaluation(v, statistics=False) for v in (1.0, 0.8, 0.9)]
    tracker = BestTracker(best_spec(DEFAULT))
    for i, found in enumerate(plain):
        tracker.observe(100 * (i + 1), found, f"step_{i}.pt")
    assert tracker.best is not None and tracker.best.step == 200  # without statistics too


@pytest.mark.parametrize("name", ["default", "validation_free", "probe_loss_patience"])
def test_each_shipped_set_charts_what_it_reads(name: str) -> None:
    path = REPO / "rules" / f"{name}.yaml"
    results = [evaluation(1.0 - 0.1 * i, 0.5 + 0.1 * i) for i in range(4)]
    read, _ = choose_panels(load_rules(path, path), results)
    keys = {panel.key for panel in read}
    expected = {
        "default": {"gradient-disparity", "probe-loss", "stiffness"},
        "validation_free": {"gradient-disparity", "probe-loss", "train-train"},
        "probe_loss_patience": {"probe-loss", "stiffness"},
    }[name]
    assert keys == expected


def test_check_says_the_default_falls_back_and_warns_for_a_required_statistic(
    tmp_path: Path,
) -> None:
    base = {
        "model": {"factory": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 2}},
        "probe": {"path": "probe.pt"},
        "runs": [{"name": "r", "path": "run"}],
    }
    (tmp_path / "run").mkdir()
    import torch

    torch.save({"inputs": torch.randn(40, 4), "targets": torch.arange(40) % 2,
                "split": ["train", "train", "val", "val"] * 10}, tmp_path / "probe.pt")  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    report = run_checks(path)
    assert not report.problems, report.problems
    assert not any("gradient_disparity" in w for w in report.warnings), report.warnings
    assert any("gradient_disparity not measured" in n and "fall back" in n for n in report.notes)
    path.write_text(yaml.safe_dump({**base, "rules": str(REPO / "rules" / "validation_free.yaml")}))
    warnings = run_checks(path).warnings
    assert any("stiffness.statistics" in w and "gradient_disparity" in w for w in warnings)
    # An ``all`` whose every sub-rule reads a statistic has nothing to fall back on.
    only = [{"kind": "all", "skip_unmeasured": True, "rules": [
        {"kind": "decline", "metric": "gsnr", "mode": "max"}]}]  # fmt: skip
    path.write_text(yaml.safe_dump({**base, "rules": only}))
    assert any("gsnr" in w for w in run_checks(path).warnings)
    # Statistics on, with a training split: the default's disparity is in use, and said so.
    on = {**base, "stiffness": {"statistics": True}}
    path.write_text(yaml.safe_dump(on))
    report = run_checks(path)
    assert any("gradient_disparity measured" in n for n in report.notes), report.notes
    assert not any("fall back" in n for n in report.notes)
