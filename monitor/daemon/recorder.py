"""Every outcome of the loop, held until the store takes it, then counted and logged once.

The loop says what happened to a checkpoint (evaluated, failed, skipped) or a watcher's
problem; the recorder turns each into one held write (``held_writes``): stored, then counted
in a metric and logged (``outcomes``). Failures pass through ``bad_input`` first, so a
checkpoint that failed before, or a half-written file, is not counted again. Writing through
the held queue is what lets a full disk pause the daemon without losing or doubling anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitor.daemon.attempts import new_attempt_reason
from monitor.daemon.bad_input import BadInput, Failure
from monitor.daemon.held_writes import HeldWrites
from monitor.daemon.outcomes import Problem, export_evaluation, record_error, record_problem
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.store.store import Store
from monitor.watching import Candidate

log = logging.getLogger("monitor.daemon")

Decide = Callable[[Store, int, Evaluation], None]


def attempt_of(store: Store, candidate: Candidate, step: int | None) -> int:
    """The attempt this evaluation belongs to, beginning the next one when it is a rerun's.

    Run again after a failed write: the new attempt is then already current and holds
    nothing, so it is not begun twice."""
    current = store.current_attempt(candidate.run)
    evaluated = store.checkpoints_of(candidate.run, current)
    path = str(candidate.path)
    reason = new_attempt_reason(evaluated, path, step, candidate.fingerprint, candidate.mtime_ns)
    return current if reason is None else store.start_attempt(candidate.run, reason)


class Recorder:
    """Holds the loop's writes; ``bad`` is set by ``start`` once the store is open."""

    def __init__(self, metrics: MonitorMetrics, held: HeldWrites, decide: Decide) -> None:
        self._metrics = metrics
        self._held = held
        self._decide = decide
        self._bad: BadInput | None = None
        self.evaluated = 0

    def start(self, store: Store, confirm_seconds: float) -> set[tuple[str, str]]:
        """Read the failures stored before; returns their (run, fingerprint)s."""
        self._bad = BadInput(store, confirm_seconds)
        return self._bad.known_fingerprints()

    @property
    def bad(self) -> BadInput:
        if self._bad is None:
            raise RuntimeError("Recorder.start was not called")
        return self._bad

    def evaluation(self, candidate: Candidate, evaluation: Evaluation, duration: float) -> None:
        def write(store: Store) -> None:
            attempt = attempt_of(store, candidate, evaluation.step)
            evaluation_id = store.record_evaluation(
                candidate.run,
                attempt=attempt,
                path=str(candidate.path),
                fingerprint=candidate.fingerprint,
                size=candidate.size,
                mtime_ns=candidate.mtime_ns,
                evaluation=evaluation.to_dict(),
                duration_seconds=duration,
            )
            self.evaluated += 1
            self.bad.forget(candidate)
            export_evaluation(self._metrics, evaluation, duration)
            self._held.add_next(lambda store: self._decide(store, evaluation_id, evaluation))

        self._held.add(write)

    def failure(self, failure: Failure) -> None:
        """A checkpoint that failed: recorded now, held back to confirm, or already known."""
        judged = self.bad.judge(failure)
        if judged is not None:
            self._held.add(self._failure_write(judged))

    def confirmed(self) -> None:
        """Held-back failures whose checkpoint stayed unchanged."""
        for failure in self.bad.confirmed():
            self._held.add(self._failure_write(failure))

    def _failure_write(self, failure: Failure) -> Callable[[Store], None]:
        def write(store: Store) -> None:
            record_error(store, self._metrics, failure.candidate, failure.reason, failure.message)
            self.bad.recorded(failure)

        return write

    def skipped(self, skipped: Candidate) -> None:
        def write(store: Store) -> None:
            if not store.is_evaluated(skipped.run, skipped.fingerprint):
                store.record_skipped(skipped.run, str(skipped.path), skipped.fingerprint,
                                     skipped.step, "backlog-latest")  # fmt: skip
                self._metrics.count_skipped(skipped.run, "backlog-latest")
                log.info("skipped %s (backlog: latest)", skipped.path)

        self._held.add(write)

    def problem(self, problem: Problem) -> None:
        self._held.add(lambda store: record_problem(store, problem))
