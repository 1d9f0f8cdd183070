"""What a report draws: each run's stored evaluations in step order, and its stop.

It reads the store read-only, so a report can be rendered while the daemon writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError, UsageError
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
    figures: dict[str, Path | None] = field(default_factory=dict)
    heatmap_steps: list[int] = field(default_factory=list)


def load_histories(
    store_path: Path,
    run: str | None = None,
    attempt: int | None = None,
    best: BestSpec | None = None,
) -> list[RunHistory]:
    """Every run's history (or ``run``'s), of its latest attempt (or ``attempt``), with the
    best checkpoint by ``best``; a clear error when there is nothing to draw."""
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
            evaluations = store.evaluations(name, chosen)
            stepped = [e for e in evaluations if e.step is not None]
            stop = store.stop_for(name, chosen)
            if not stepped:
                continue
            until = [e for e in evaluations if stop is None or e.id <= stop.evaluation_id]
            kept = None if best is None else best_of(best, ((e.step, e.result, e.path)
                                                            for e in until))  # fmt: skip
            histories.append(
                RunHistory(
                    run=name,
                    steps=[int(e.step) for e in stepped if e.step is not None],
                    results=[e.result for e in stepped],
                    stop_step=None if stop is None else _int(stop.payload.get("step")),
                    stop_rule=None if stop is None else stop.rule,
                    stop_reason=None if stop is None else stop.reason,
                    unstepped=len(evaluations) - len(stepped),
                    attempt=chosen,
                    attempts=latest,
                    best=None if kept is None else kept.to_dict(),
                )
            )
    if not histories:
        where = f"run {run!r} in " if run is not None else ""
        raise ReportError(
            f"{store_path}: no evaluations with a step in {where}the store yet; run "
            "`stiffness-monitor watch` until it has evaluated some checkpoints"
        )
    return histories


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
