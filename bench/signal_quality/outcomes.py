"""Where a rule set stops a recorded run, and what that stop costs or saves.

The stop comes from the product's own ``monitor.rules.engine.replay`` over the stored evaluations,
so the benchmark scores the engine users run, not a re-implementation. The scoring is plain
arithmetic on (step, test accuracy) pairs, kept apart so it can be checked by hand:

- regret: best test accuracy of the run minus the test accuracy at the stop (0 is perfect);
- smoothed regret: the same on the test curve smoothed by a centred mean over
  ``SMOOTHING`` checkpoints, so that one lucky checkpoint at the top of a plateau (on digits a
  point is 4 test examples) does not decide a rule's score;
- saved: the share of the run's optimizer steps after the stop (0 when it never stops);
- early: a run without label noise stopped before its best checkpoint; *costly* when that
  also lost more than ``COSTLY_REGRET`` of test accuracy (stopping one checkpoint before a
  plateau's noisy maximum is not what a user fears; stopping mid-climb is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.rules.engine import replay
from monitor.rules.spec import RuleSet, load_rules

#: An early stop on a healthy run that loses more than this (accuracy, 0..1) is costly.
COSTLY_REGRET = 0.01
#: Checkpoints in the centred mean that smooths the test curve (fewer at the ends).
SMOOTHING = 5
#: A run whose last checkpoint is below this multiple of chance accuracy has collapsed (the
#: learning rate broke it), which memorising noisy labels never does on these tasks.
COLLAPSE_CHANCE = 2.0


@dataclass(frozen=True)
class Outcome:
    """One rule set on one run. ``stop_index`` is None when the rules never said stop (the run
    went to its end; the last checkpoint is what it delivers)."""

    scenario: str
    rules: str
    stop_index: int | None
    stop_step: int
    stop_epoch: int
    test_at_stop: float
    best_test: float
    best_step: int
    regret: float
    saved: float
    early: bool
    costly_early: bool
    smoothed_regret: float = 0.0
    collapsed: bool = False


def smooth(test: Sequence[float], width: int = SMOOTHING) -> list[float]:
    """The centred mean over ``width`` checkpoints (truncated at both ends)."""
    half = width // 2
    return [
        sum(test[max(0, i - half) : i + half + 1]) / len(test[max(0, i - half) : i + half + 1])
        for i in range(len(test))
    ]


def has_collapsed(test: Sequence[float], classes: int) -> bool:
    """The run ends below ``COLLAPSE_CHANCE`` times chance accuracy."""
    return bool(test) and test[-1] < COLLAPSE_CHANCE / classes


def best_index(test: Sequence[float]) -> int:
    """The oracle's checkpoint: the first one with the best test accuracy."""
    if not test:
        raise ValueError("expected at least one checkpoint, got an empty history")
    return max(range(len(test)), key=lambda i: (test[i], -i))


def score(
    steps: Sequence[int],
    test: Sequence[float],
    stop_index: int | None,
    healthy: bool,
    scenario: str = "",
    rules: str = "",
    collapsed: bool = False,
) -> Outcome:
    """Score a stop at ``stop_index`` (None: ran to the end) on one run's checkpoints."""
    if len(steps) != len(test) or not steps:
        raise ValueError(
            f"expected equal, non-empty steps and accuracies, got {len(steps)}, {len(test)}"
        )
    if stop_index is not None and not 0 <= stop_index < len(steps):
        raise ValueError(f"stop index {stop_index} outside the run's {len(steps)} checkpoints")
    at = len(steps) - 1 if stop_index is None else stop_index
    best = best_index(test)
    regret = test[best] - test[at]
    early = healthy and at < best
    smoothed = smooth(test)
    return Outcome(
        scenario=scenario,
        rules=rules,
        stop_index=stop_index,
        stop_step=steps[at],
        stop_epoch=at + 1,
        test_at_stop=test[at],
        best_test=test[best],
        best_step=steps[best],
        regret=regret,
        saved=(steps[-1] - steps[at]) / steps[-1],
        early=early,
        costly_early=early and regret > COSTLY_REGRET,
        smoothed_regret=max(smoothed) - smoothed[at],
        collapsed=collapsed,
    )


def rule_stop(rule_set: RuleSet, history: dict[str, Any]) -> int | None:
    """Replay the stored evaluations through a fresh ``RuleEngine``: the first stop's index."""
    checkpoints = history["checkpoints"]
    result = replay(rule_set, ((c["step"], c["evaluation"]) for c in checkpoints))
    return None if result.stop is None else result.stop.index


def evaluate_rules(label: str, rule_set: RuleSet | None, history: dict[str, Any]) -> Outcome:
    """Score ``rule_set`` on one run; ``None`` is the oracle (stops at the best test accuracy)."""
    checkpoints = history["checkpoints"]
    steps = [int(c["step"]) for c in checkpoints]
    test = [float(c["test_accuracy"]) for c in checkpoints]
    index = best_index(test) if rule_set is None else rule_stop(rule_set, history)
    scenario = history["scenario"]
    classes = len(checkpoints[0]["evaluation"].get("classes") or [0, 1])
    return score(steps, test, index, scenario["noise"] == 0.0, scenario["name"], label,
                 has_collapsed(test, classes))  # fmt: skip


def load_rule_files(paths: Sequence[Path]) -> dict[str, RuleSet]:
    """Rule files by label (``rules/default.yaml`` -> ``default``), loaded as the daemon does."""
    return {path.stem: load_rules(path, path) for path in paths}
