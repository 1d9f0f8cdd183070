"""The signal-quality benchmark: its arithmetic by hand, one tiny run end to end, the table.

The benchmark chooses the shipped default rule set, so its scoring must be right: regret,
savings and early-stop detection are checked on histories small enough to verify by hand, the
training -> Evaluator -> replay path on a real (tiny) run, and the committed cache must still
build the table and still choose the default that ``rules/default.yaml`` holds.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.signal_quality import data
from bench.signal_quality.__main__ import BEGIN, FINISH, main, splice
from bench.signal_quality.build import CACHE, load_histories
from bench.signal_quality.outcomes import (
    COSTLY_REGRET,
    Outcome,
    best_index,
    evaluate_rules,
    has_collapsed,
    rule_stop,
    score,
    smooth,
)
from bench.signal_quality.report import dominates, family, signal
from bench.signal_quality.scenarios import SELECTION_SEEDS, Scenario, suite
from bench.signal_quality.summary import TIE, choose, paired_difference, summarise
from bench.signal_quality.training import _evaluator, _save, load_task, norm_summary, run_scenario
from monitor.rules.spec import load_rules, parse_rules

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "rules" / "probe_loss_patience.yaml"
FREE = REPO / "rules" / "validation_free.yaml"

# -- scoring, by hand -------------------------------------------------------------------------

STEPS = [10, 20, 30, 40]
TEST = [0.5, 0.8, 0.7, 0.6]


@pytest.mark.parametrize(
    ("stop", "healthy", "regret", "saved", "stop_step", "early", "costly"),
    [
        pytest.param(2, False, 0.1, 0.25, 30, False, False, id="after-best"),
        pytest.param(1, True, 0.0, 0.5, 20, False, False, id="at-best"),
        pytest.param(0, True, 0.3, 0.75, 10, True, True, id="healthy-before-best"),
        pytest.param(0, False, 0.3, 0.75, 10, False, False, id="noisy-before-best-not-counted"),
        pytest.param(None, True, 0.2, 0.0, 40, False, False, id="never-stops"),
        pytest.param(3, False, 0.2, 0.0, 40, False, False, id="stops-at-last"),
    ],
)
def test_score_by_hand(
    stop: int | None,
    healthy: bool,
    regret: float,
    saved: float,
    stop_step: int,
    early: bool,
    costly: bool,
) -> None:
    outcome = score(STEPS, TEST, stop, healthy)
    assert outcome.regret == pytest.approx(regret)
    assert outcome.saved == pytest.approx(saved)
    assert outcome.stop_step == stop_step
    assert (outcome.early, outcome.costly_early) == (early, costly)
    assert (outcome.best_step, outcome.best_test) == (20, 0.8)


def test_an_early_stop_within_a_point_is_early_but_not_costly() -> None:
    tiny = score([1, 2, 3], [0.95, 0.9549, 0.95], 0, healthy=True)
    assert tiny.early and not tiny.costly_early
    assert tiny.regret < COSTLY_REGRET
    big = score([1, 2, 3], [0.90, 0.95, 0.95], 0, healthy=True)
    assert big.early and big.costly_early


def test_smoothed_regret_and_collapse_by_hand() -> None:
    assert smooth([0.0, 0.5, 1.0, 0.5, 0.0]) == pytest.approx([0.5, 0.5, 0.4, 0.5, 0.5])
    # One lucky checkpoint: raw regret counts it, the smoothed curve barely does.
    test = [0.80] * 4 + [0.85] + [0.80] * 5
    outcome = score(list(range(1, 11)), test, 8, healthy=False)
    assert outcome.regret == pytest.approx(0.05)
    assert outcome.smoothed_regret == pytest.approx(0.01)
    assert has_collapsed([0.9, 0.5, 0.19], classes=10)
    assert not has_collapsed([0.9, 0.5, 0.21], classes=10)
    assert not has_collapsed([0.5, 0.2], classes=20)  # twice chance is 0.1 with 20 classes
    assert has_collapsed([0.5, 0.09], classes=20)


def test_the_paired_bootstrap_by_hand() -> None:
    same = paired_difference([0.1, 0.2, 0.3], [0.0, 0.1, 0.2])
    assert (same.mean, same.low, same.high) == pytest.approx((0.1, 0.1, 0.1))
    assert same.excludes_zero
    mixed = paired_difference([0.0, 0.0, 0.0, 0.0], [0.1, -0.1, 0.1, -0.1])
    assert mixed.mean == pytest.approx(0.0) and mixed.low < 0 < mixed.high
    assert not mixed.excludes_zero
    # Pairing matters: large differences between runs, a steady gain within each.
    a, b = [0.10, 0.50, 0.90, 0.30], [0.11, 0.51, 0.91, 0.31]
    assert paired_difference(a, b).high < 0
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference([0.1], [])


def test_the_oracle_takes_the_first_best_checkpoint() -> None:
    assert best_index([0.1, 0.9, 0.9, 0.3]) == 1
    assert best_index([0.7]) == 0
    with pytest.raises(ValueError, match="empty history"):
        best_index([])


@pytest.mark.parametrize(
    ("steps", "test", "stop", "fragment"),
    [
        pytest.param([1, 2], [0.5], None, "equal", id="lengths"),
        pytest.param([], [], None, "non-empty", id="empty"),
        pytest.param([1, 2], [0.5, 0.6], 2, "outside", id="index"),
    ],
)
def test_score_rejects_bad_input(
    steps: list[int], test: list[float], stop: int | None, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        score(steps, test, stop, healthy=False)


def _outcome(name: str, regret: float, saved: float, costly: bool = False) -> Outcome:
    return Outcome(name, "r", 0, 1, 1, 0.9, 0.9 + regret, 1, regret, saved, costly, costly)


def test_summaries_and_the_choice() -> None:
    healthy = {"a"}
    summary = summarise([_outcome("a", 0.02, 0.5, True), _outcome("b", 0.04, 0.1)], healthy)
    assert summary.mean_regret == pytest.approx(0.03)
    assert summary.max_regret == pytest.approx(0.04)
    assert summary.mean_saved == pytest.approx(0.3)
    assert (summary.healthy, summary.early, summary.costly_early) == (1, 1, 1)
    summaries = {
        # lowest regret, but a costly early stop on a healthy run: out
        "reckless": summarise([_outcome("a", 0.0, 0.9, True)], healthy),
        "careful": summarise([_outcome("a", 0.010, 0.2)], healthy),
        # within TIE of "careful" and saves more: the tie goes to it
        "thrifty": summarise([_outcome("a", 0.010 + TIE / 2, 0.4)], healthy),
        "late": summarise([_outcome("a", 0.010 + 2 * TIE, 0.8)], healthy),
    }
    assert choose(summaries) == "thrifty"
    assert choose({"reckless": summaries["reckless"]}) == "reckless"  # fewest costly, if none clean
    # Round two: up to the baseline's costly stops are allowed, then the lowest regret.
    assert choose(summaries, baseline_costly=1) == "reckless"
    assert choose(summaries, baseline_costly=0) == "thrifty"


def test_rule_sets_are_sorted_by_the_signal_they_read() -> None:
    assert signal(load_rules(BASELINE, BASELINE)) == "probe loss"  # the NaN guard is not a signal
    both = parse_rules(
        [{"kind": "all", "rules": [{"kind": "slope", "metric": "within_class"},
                                   {"kind": "decline", "metric": "probe_accuracy"}]}],
        "inline",
    )  # fmt: skip
    assert signal(both) == "stiffness + probe accuracy"
    assert family(both) == "stiffness" and family(load_rules(BASELINE, BASELINE)) == "probe"
    assert family(load_rules(FREE, FREE)) == "validation-free"
    default = REPO / "rules" / "default.yaml"
    assert family(load_rules(default, default)) == "training split"
    assert signal(load_rules(default, default)) == "gradient statistics + probe loss"
    # A held-out guard makes a training-split rule need held-out labels after all.
    guarded = parse_rules(
        [{"kind": "decline", "metric": "gradient_disparity", "mode": "min"},
         {"kind": "non_finite", "metrics": ["probe_loss"]}],
        "inline",
    )  # fmt: skip
    assert family(guarded) == "training split"
    healthy = {"a"}
    good, bad = (
        summarise([_outcome("a", r, 0.5, c)], healthy) for r, c in ((0.01, False), (0.02, True))
    )
    assert dominates(good, bad) and not dominates(bad, good) and not dominates(good, good)


def _history(losses: list[float], test: list[float]) -> dict[str, Any]:
    checkpoints = [
        {"step": 100 * (i + 1), "test_accuracy": t,
         "evaluation": {"probe_loss": loss, "probe_accuracy": 0.5, "classes": [0, 1],
                        "cosine": {"within": 0.5, "between": 0.1}}}
        for i, (loss, t) in enumerate(zip(losses, test, strict=True))
    ]  # fmt: skip
    return {"scenario": {"name": "hand", "noise": 0.0}, "checkpoints": checkpoints}


def test_rules_are_replayed_by_the_product_engine() -> None:
    # Lightning defaults: best loss at index 1, then three evaluations without a new best.
    history = _history([1.0, 0.8, 0.9, 0.85, 0.95, 0.7], [0.5, 0.7, 0.8, 0.6, 0.6, 0.9])
    baseline = load_rules(BASELINE, BASELINE)
    assert rule_stop(baseline, history) == 4
    outcome = evaluate_rules("baseline", baseline, history)
    assert (outcome.stop_step, outcome.stop_epoch) == (500, 5)
    assert outcome.regret == pytest.approx(0.3)  # best 0.9 at the end, 0.6 at the stop
    assert outcome.saved == pytest.approx(1 / 6)
    assert outcome.early and outcome.costly_early
    never = parse_rules([{"kind": "threshold", "metric": "probe_loss", "mode": "min",
                          "stopping_threshold": 0.0}], "inline")  # fmt: skip
    assert rule_stop(never, history) is None
    assert evaluate_rules("oracle", None, history).stop_index == 5


# -- the data and one tiny run through the real path --------------------------------------


def test_splits_are_disjoint_noise_hits_training_only() -> None:
    splits = data.digits(noise=0.4, seed=3)
    held = ~splits.probe_is_train
    assert torch.bincount(splits.probe_y[held]).tolist() == [40] * 10
    assert torch.bincount(splits.probe_y[splits.probe_is_train]).tolist() == [75] * 10
    assert len(splits.test_y) == 400
    test_rows = {tuple(x.tolist()) for x in splits.test_x}
    train_rows = {tuple(x.tolist()) for x in splits.train_x}
    held_rows = {tuple(x.tolist()) for x in splits.probe_x[held]}
    assert not held_rows & test_rows and not held_rows & train_rows
    # The training half is training examples, with the labels the trainer used.
    pairs = zip(splits.train_x, splits.train_y, strict=True)
    labelled = {tuple(x.tolist()): int(y) for x, y in pairs}
    half = splits.probe_is_train
    for x, y in zip(splits.probe_x[half], splits.probe_y[half], strict=True):
        assert labelled[tuple(x.tolist())] == int(y)
    assert not bool(splits.probe_mislabelled[held].any())
    assert splits.noisy == pytest.approx(0.4 * len(splits.train_y), rel=0.15)
    clean = data.digits(noise=0.0, seed=3)
    assert torch.equal(clean.train_x, splits.train_x)  # same split, only labels differ
    assert int((clean.train_y != splits.train_y).sum()) == splits.noisy  # always a wrong class
    assert torch.equal(clean.test_y, splits.test_y)
    pair = data.digits(noise=0.4, seed=3, kind="pair")
    moved = pair.train_y != clean.train_y
    assert torch.equal(pair.train_y[moved], (clean.train_y[moved] + 1) % 10)  # c -> c+1
    overlap = data.overlap(noise=0.2, seed=0)
    assert overlap.classes == 10 and len(overlap.test_y) == 5000
    assert torch.bincount(overlap.probe_y[~overlap.probe_is_train]).tolist() == [40] * 10
    assert torch.bincount(overlap.probe_y[overlap.probe_is_train]).tolist() == [100] * 10


def test_the_norm_summary_maps_examples_back_by_hand(tmp_path: Path) -> None:
    """Per-example gradient norms against one backward per example, split and mislabelled
    examples named by the benchmark's own masks (the result follows the sampled probe's
    order, not the file's: this caught a mapping through the class-sorted copy)."""
    scenario = Scenario("digits", 0.4, "adam", "high", "mlp", seed=1)
    splits = load_task(scenario)
    evaluator = _evaluator(scenario, splits, tmp_path)
    torch.manual_seed(0)
    model = evaluator._model
    assert model is not None
    with torch.no_grad():  # a trained-looking model: weights far from their init
        for parameter in model.parameters():
            parameter.mul_(3.0)
    evaluation = evaluator.evaluate(_save(model, 10, 1, tmp_path), run="x").to_dict()
    reference = copy.deepcopy(model).double()  # torch's fp32 loss rounds fitted examples
    by_hand = []
    for x, y in zip(splits.probe_x.double(), splits.probe_y, strict=True):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(reference(x[None]), y[None]).backward()
        by_hand.append(float(sum((p.grad**2).sum() for p in reference.parameters())) ** 0.5)
    from monitor.probe.sampling import load_probe

    sampled = load_probe(evaluator.config.probe).source_indices  # 40 per class and split
    assert len(sampled) == 800 and len(set(sampled)) == 800
    summary = norm_summary(evaluation, splits, sampled)
    wrong = [bool(splits.probe_mislabelled[i]) for i in sampled]
    train = [bool(splits.probe_is_train[i]) for i in sampled]
    by_hand = [by_hand[i] for i in sampled]
    mislabelled = [n for n, w in zip(by_hand, wrong, strict=True) if w]
    clean = [n for n, w, t in zip(by_hand, wrong, train, strict=True) if t and not w]
    assert summary["train_mislabelled"] == pytest.approx(
        sum(mislabelled) / len(mislabelled), rel=1e-5
    )
    assert summary["train_clean"] == pytest.approx(sum(clean) / len(clean), rel=1e-5)
    val = [n for n, t in zip(by_hand, train, strict=True) if not t]
    assert summary["val"] == pytest.approx(sum(val) / len(val), rel=1e-5)


def test_a_tiny_run_end_to_end_through_evaluator_and_rules() -> None:
    scenario = Scenario("digits", 0.2, "adam", "high", "mlp", seed=5)
    history = run_scenario(scenario, epochs=3)
    json.dumps(history, allow_nan=False)  # what the cache stores
    checkpoints = history["checkpoints"]
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3]
    steps_per_epoch = math.ceil(history["train_size"] / scenario.batch_size)
    assert [c["step"] for c in checkpoints] == [steps_per_epoch * e for e in (1, 2, 3)]
    for checkpoint in checkpoints:
        evaluation = checkpoint["evaluation"]
        assert evaluation["step"] == checkpoint["step"]  # read back from the checkpoint file
        assert evaluation["mode"] == "class" and evaluation["classes"] == list(range(10))
        assert evaluation["counts"]["examples"] == 800  # 40 per class and split
        assert evaluation["counts"]["train_examples"] == 400
        assert -1.0 <= evaluation["cosine"]["within"] <= 1.0
        for pair_set in ("train-val", "train-train"):
            assert -1.0 <= evaluation["pair_sets"][pair_set]["cosine"]["within"] <= 1.0
        assert evaluation["train_probe_loss"] > 0 and evaluation["statistics"]["halves"] == [
            200,
            200,
        ]
        assert evaluation["statistics"]["gradient_disparity"] > 0
        assert (
            0
            <= evaluation["statistics"]["suspects_mislabelled"]
            <= evaluation["statistics"]["suspects"]
        )
        assert evaluation["uncertainty"]["within_class"] > 0  # jackknife, for min_sigma
        assert 0.0 <= checkpoint["test_accuracy"] <= 1.0
    assert checkpoints[-1]["test_accuracy"] > 0.5  # the MLP learns digits in 3 epochs
    outcome = evaluate_rules("baseline", load_rules(BASELINE, BASELINE), history)
    assert outcome.scenario == scenario.name and 0.0 <= outcome.saved < 1.0


# -- the committed cache and the table ------------------------------------------------------


def test_every_scenario_has_a_cached_history() -> None:
    histories = load_histories(suite(), CACHE)
    assert len(histories) == len(suite())
    for history in histories:
        epochs = history["scenario"]["epochs"]
        assert len(history["checkpoints"]) == epochs
    with pytest.raises(FileNotFoundError, match="--rebuild"):
        load_histories(suite((99,)), CACHE)


def test_the_table_builds_from_the_cache_and_chooses_the_shipped_default(tmp_path: Path) -> None:
    out, table = tmp_path / "table.md", tmp_path / "outcomes.csv"
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n")
    seeds = [str(seed) for seed in SELECTION_SEEDS]
    arguments = ["--out", str(out), "--csv", str(table), "--benchmarks", str(benchmarks)]
    assert main([*arguments, "--seeds", *seeds]) == 0
    assert benchmarks.read_text().startswith("# Benchmarks\n\n" + BEGIN)
    text = out.read_text()
    assert "2026-12-05" in text and "2-core CPU container" in text
    assert "`rules/default.yaml` holds exactly these rules." in text
    assert "`rules/validation_free.yaml` holds exactly these rules." in text
    for label in ("oracle", "default", "validation_free", "probe_loss_patience",
                  "no rule (run to the end)"):  # fmt: skip
        assert f"| `{label}` |" in text
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    runs = len(suite(SELECTION_SEEDS))
    assert len(rows) % runs == 0 and len({row["scenario"] for row in rows}) == runs
    oracle = [row for row in rows if row["rules"] == "oracle"]
    assert all(float(row["regret"]) == 0.0 for row in oracle)


def test_benchmarks_md_carries_the_table_the_cache_and_rules_give_today(tmp_path: Path) -> None:
    """The committed summary in BENCHMARKS.md may not drift from the cache and the rule files."""
    committed = (REPO / "BENCHMARKS.md").read_text()
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(committed)
    arguments = ["--out", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]
    assert main([*arguments, "--benchmarks", str(copy)]) == 0
    assert copy.read_text() == committed, "run `python -m bench.signal_quality` and commit"


def test_splice_replaces_only_its_own_section() -> None:
    section = f"{BEGIN}\nnew\n{FINISH}"
    old = f"head\n{BEGIN}\nold\n{FINISH}\ntail\n"
    assert splice(old, section) == f"head\n{section}\ntail\n"
    assert splice("head\n", section) == f"head\n\n{section}\n"
