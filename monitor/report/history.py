"""What a report draws: each run's stored evaluations in step order, and its stop.

It reads the store read-only, so a report can be rendered while the daemon writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError, UsageError
from monitor.report.panels import Drawn
from monitor.rules.best import best_of
from monitor.rules.spec import BestSpec
from monitor.store.store import Store


class ReportError(MonitorError):
    """Nothing to report: the store holds no evaluations (for that run)."""


class UnknownRunError(ReportError):
    """``--run`` names a run the store does not know (a usage problem)."""


@dataclass(frozen=True)
class RunHistory:
    """One run's evaluations with a step, in step order, and its stop if one was raised."""

    run: str
    steps: list[int]
    results: list[dict[str, Any]]
    stop_step: int | None = None
    stop_rule: str | None = None
    stop_reason: str | None = None
    unstepped: int = 0  # evaluations without a step cannot be placed on the x axis
    attempt: int = 1
    attempts: int = 1
    best: dict[str, Any] | None = None  # the attempt's best checkpoint (up to its stop)
    evaluations: int = 0  # every evaluation of the attempt, with a step or without
    stop_number: int | None = None  # the stop's evaluation, counted from 1 in evaluation order
    stop_checkpoint: str | None = None
    saved_evaluations: int | None = None  # evaluated after the stop, as backtest counts them
    last_step: int | None = None
    # Filled in by the writer once drawn: the figures that show what the rules read, the
    # others, and the metrics a rule reads that these evaluations never have.
    rule_figures: list[Drawn] = field(default_factory=list)
    other_figures: list[Drawn] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    heatmap_steps: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``run`` (``run, attempt 2 of 3`` when the run has several attempts)."""
        if self.attempts == 1:
            return self.run
        return f"{self.run}, attempt {self.attempt} of {self.attempts}"


def load_histories(
    store_path: Path,
    run: str | None = None,
    attempt: int | None = None,
    best: BestSpec | None = None,
    every_attempt: bool = False,
) -> list[RunHistory]:
    """Every run's history (or ``run``'s), of its latest attempt (or ``attempt``, or each
    attempt with ``every_attempt``), with the best checkpoint by ``best``; a clear error when
    there is nothing to draw."""
    with Store(store_path, readonly=True) as store:
        runs = store.runs()
        if run is not None and run not in runs:
            known = ", ".join(runs) or "none"
            raise UnknownRunError(f"--run {run}: no such run in {store_path} (runs: {known})")
        histories = []
        for name in [run] if run is not None else runs:
            latest = store.current_attempt(name)
            chosen = latest if attempt is None else attempt
            if not 1 <= chosen <= latest:
                raise UsageError(f"--attempt {chosen}: run {name} has attempts 1 to {latest}")
            for number in range(1, latest + 1) if every_attempt else [chosen]:
                found = _history(store, name, number, latest, best)
                if found is not None:
                    histories.append(found)
    if not histories:
        where = f"run {run!r} in " if run is not None else ""
        raise ReportError(
            f"{store_path}: no evaluations with a step in {where}the store yet; run "
            "`stiffness-monitor watch` until it has evaluated some checkpoints"
        )
    return histories


def _history(
    store: Store, name: str, attempt: int, attempts: int, best: BestSpec | None
) -> RunHistory | None:
    """One attempt's history, or None when none of its evaluations has a step."""
    evaluations = store.evaluations(name, attempt)
    stepped = [e for e in evaluations if e.step is not None]
    if not stepped:
        return None
    stop = store.stop_for(name, attempt)
    # Evaluation order (ids), as the daemon judged them and as backtest replays them.
    until = sorted(
        (e for e in evaluations if stop is None or e.id <= stop.evaluation_id),
        key=lambda e: e.id,
    )
    kept = None if best is None else best_of(best, ((e.step, e.result, e.path) for e in until))
    return RunHistory(
        run=name,
        steps=[int(e.step) for e in stepped if e.step is not None],
        results=[e.result for e in stepped],
        stop_step=None if stop is None else _int(stop.payload.get("step")),
        stop_rule=None if stop is None else stop.rule,
        stop_reason=None if stop is None else stop.reason,
        unstepped=len(evaluations) - len(stepped),
        attempt=attempt,
        attempts=attempts,
        best=None if kept is None else kept.to_dict(),
        evaluations=len(evaluations),
        stop_number=None if stop is None else len(until),
        stop_checkpoint=None if stop is None else _str(stop.payload.get("checkpoint")),
        saved_evaluations=None if stop is None else len(evaluations) - len(until),
        last_step=max(e.step for e in stepped if e.step is not None),
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
