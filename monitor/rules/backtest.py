"""``backtest``: replay a rule set over the stored results of past runs.

Rules are cheap to try and expensive to trust; replaying them over runs that went to the end
shows where each would have stopped, what the probe said there, and how much training it
would have saved, before the rule is allowed to stop a real run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.errors import UsageError
from monitor.rules.best import best_of, best_spec
from monitor.rules.engine import replay
from monitor.rules.spec import RuleSet
from monitor.store.store import Store, StoredEvaluation


@dataclass(frozen=True)
class Backtest:
    """Where one rule set would have stopped one run."""

    run: str
    rules: str
    evaluations: int
    stop_step: int | None
    stop_checkpoint: str | None
    rule: str | None
    reason: str | None
    within_class_at_stop: float | None
    probe_loss_at_stop: float | None
    probe_accuracy_at_stop: float | None
    best_probe_accuracy: float | None
    best_probe_accuracy_step: int | None
    evaluations_saved: int
    last_step: int | None
    attempt: int = 1
    attempts: int = 1
    best_checkpoint: dict[str, Any] | None = None  # up to the stop, else over the attempt

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def backtest_run(
    run: str,
    rules: RuleSet,
    label: str,
    history: list[StoredEvaluation],
    attempt: int = 1,
    attempts: int = 1,
) -> Backtest:
    """Replay ``rules`` over ``history`` (one attempt, in evaluation order) and summarise.

    ``label`` names the rule set in the output: its file, or ``inline``. The best checkpoint
    is the one the daemon would have kept by the stop (or by the end, without a stop).
    """
    history = sorted(history, key=lambda stored: stored.id)
    result = replay(rules, ((stored.step, stored.result) for stored in history))
    stop = history[result.stop.index] if result.stop is not None else None
    until = history if result.stop is None else history[: result.stop.index + 1]
    kept = best_of(best_spec(rules), ((e.step, e.result, e.path) for e in until))
    accuracies: list[tuple[float, int | None]] = [
        (float(stored.result["probe_accuracy"]), stored.step)
        for stored in history
        if stored.result.get("probe_accuracy") is not None
    ]
    best: tuple[float | None, int | None] = max(
        accuracies, key=lambda item: item[0], default=(None, None)
    )
    return Backtest(
        run=run,
        rules=label,
        evaluations=result.evaluations,
        stop_step=None if stop is None else stop.step,
        stop_checkpoint=None if stop is None else stop.path,
        rule=None if result.stop is None else result.stop.rule,
        reason=None if result.stop is None else result.stop.reason,
        within_class_at_stop=None
        if stop is None
        else (stop.result.get("cosine") or {}).get("within"),
        probe_loss_at_stop=None if stop is None else stop.result.get("probe_loss"),
        probe_accuracy_at_stop=None if stop is None else stop.result.get("probe_accuracy"),
        best_probe_accuracy=best[0],
        best_probe_accuracy_step=best[1],
        evaluations_saved=0 if result.stop is None else len(history) - 1 - result.stop.index,
        last_step=history[-1].step if history else None,
        attempt=attempt,
        attempts=attempts,
        best_checkpoint=None if kept is None else kept.to_dict(),
    )


def backtest_store(
    store_path: Path,
    rules: RuleSet,
    label: str,
    run: str | None = None,
    attempt: int | None = None,
) -> list[Backtest]:
    """Backtest every run in the store (or just ``run``): its latest attempt, or ``attempt``."""
    with Store(store_path, readonly=True) as store:
        found = []
        for name in [run] if run is not None else store.runs():
            latest = store.current_attempt(name)
            chosen = latest if attempt is None else attempt
            if not 1 <= chosen <= latest:
                raise UsageError(f"--attempt {chosen}: run {name} has attempts 1 to {latest}")
            history = store.evaluations(name, chosen)
            found.append(backtest_run(name, rules, label, history, chosen, latest))
        return found


def format_backtest(item: Backtest) -> str:
    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    if item.stop_step is None and item.rule is None:
        verdict = f"would not have stopped ({item.evaluations} evaluations replayed)"
    else:
        verdict = (
            f"would have stopped at step {item.stop_step} ({item.stop_checkpoint}) by rule "
            f"{item.rule}, saving {item.evaluations_saved} of {item.evaluations} evaluations\n"
            f"  why: {item.reason}\n"
            f"  there: within-class {num(item.within_class_at_stop)}, probe loss "
            f"{num(item.probe_loss_at_stop)}, probe accuracy {num(item.probe_accuracy_at_stop)}"
        )
    best = (
        f"  best probe accuracy {num(item.best_probe_accuracy)} at step "
        f"{item.best_probe_accuracy_step}; last evaluated step {item.last_step}"
    )
    kept = item.best_checkpoint
    if kept is not None:
        best += (
            f"\n  best checkpoint: step {kept['step']} ({kept['path']}), {kept['metric']} "
            f"{num(kept['value'])}"
        )
    attempt = f", attempt {item.attempt} of {item.attempts}" if item.attempts > 1 else ""
    return f"run {item.run}{attempt} [{item.rules}]: {verdict}\n{best}"
