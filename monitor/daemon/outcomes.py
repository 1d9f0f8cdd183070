"""What the loop's outcomes become: a metric, a stored row and one log line each.

The loop decides what happened to a checkpoint; this module says so, the same way every time,
so an operator finds every evaluation, every failed checkpoint and every watcher problem in
the metrics, the store and the log alike. It logs as ``monitor.daemon``, like the loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.errors import CheckpointError
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.store.store import Store
from monitor.watching import Candidate

log = logging.getLogger("monitor.daemon")


@dataclass(frozen=True)
class Problem:
    """A watcher's report (an unreadable folder, a vanished file), queued for the loop."""

    run: str
    path: Path | None
    reason: str
    message: str


def error_reason(error: CheckpointError) -> str:
    """A checkpoint that vanished while we loaded it was deleted or rotated away."""
    return "deleted" if error.reason == "missing" else error.reason


def export_evaluation(metrics: MonitorMetrics, evaluation: Evaluation, duration: float) -> None:
    """The evaluation's gauges and histogram, and its one structured log line."""
    result = evaluation.result
    run = evaluation.run or ""
    metrics.observe_evaluation(
        run,
        step=evaluation.step,
        within=result.cosine.within,
        between=result.cosine.between,
        probe_loss=result.probe_loss,
        probe_accuracy=result.probe_accuracy,
        duration=duration,
        finished_at=time.time(),
    )
    metrics.set_class_within(run, result.classes, result.cosine.per_class)
    stats = result.statistics
    metrics.statistics.set(
        run,
        None if stats is None else (
            stats.gradient_disparity, stats.gsnr, stats.gsnr_median, stats.opposing_share
        ),
    )  # fmt: skip
    fields: dict[str, Any] = {
        "run": run,
        "step": evaluation.step,
        "within": result.cosine.within,
        "between": result.cosine.between,
        "probe_loss": result.probe_loss,
        "probe_accuracy": result.probe_accuracy,
        "seconds": round(duration, 3),
        "checkpoint": evaluation.checkpoint,
    }
    log.info("evaluated", extra={"fields": fields})


def record_error(
    store: Store, metrics: MonitorMetrics, candidate: Candidate, reason: str, message: str
) -> None:
    """A checkpoint that was not evaluated: stored with its fingerprint, counted, logged (in
    that order: a write the store refused is retried, and must not count twice)."""
    store.record_error(candidate.run, str(candidate.path), reason, message,
                       candidate.fingerprint)  # fmt: skip
    metrics.count_error(candidate.run, reason)
    log.warning(
        "checkpoint not evaluated (%s): %s",
        reason,
        message,
        extra={"fields": {"run": candidate.run, "reason": reason}},
    )


def record_problem(store: Store, problem: Problem) -> None:
    """A watcher's problem, stored and logged (the watcher counted it when it happened)."""
    path = "" if problem.path is None else str(problem.path)
    store.record_error(problem.run, path, problem.reason, problem.message)
    log.warning(
        "%s",
        problem.message,
        extra={"fields": {"run": problem.run, "reason": problem.reason}},
    )
