"""TensorBoard for every run: each evaluation written once its rules have judged it.

The daemon wires; ``monitor.exporter.tensorboard`` writes. What is written is what the store
holds: the stored evaluation, the verdicts stored for it and its attempt's stored stop, so the
charts and ``backtest``/``report`` never disagree. Each attempt of a run is a TensorBoard run
of its own: attempt 1 in the run's ``tensorboard.dir``, attempt N in ``attempt-N`` inside it,
so a rerun that starts again at step 24 draws a new line instead of doubling back over the old.

At start-up each folder is read back and the stored evaluations whose step it lacks are
written (a crash between storing and writing, or ``tensorboard.enabled`` turned on for a run
with a history); steps already there are never written again, so a restarted daemon adds no
duplicate points. An evaluation without a step has no place on TensorBoard's axis and is left
out (logged once per run).

Writing must never break the daemon: a failure (full disk, permissions, a symlink planted
where the folder should be) costs one log line per run while it lasts, and one count per
failed write (``stiffness_tensorboard_write_failures_total``: one per evaluation while the
folder stays broken); the evaluation is stored all the same. The next evaluation tries again,
on a fresh file, and writes every stored evaluation the folder lacks: nothing is missed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from monitor.config.schema import MonitorConfig
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.tensorboard import BoardEntry, BoardWriter, TensorBoardError, written_steps
from monitor.store.store import Store, StoredEvaluation, StoredStop, StoreError

log = logging.getLogger("monitor.tensorboard")


def attempt_folder(folder: Path, attempt: int) -> Path:
    """Attempt 1 in the run's folder, attempt N in ``attempt-N`` inside it."""
    return folder if attempt <= 1 else folder / f"attempt-{attempt}"


class Boards:
    """The event files of every run while ``tensorboard.enabled``; nothing at all otherwise."""

    def __init__(self, config: MonitorConfig, metrics: MonitorMetrics) -> None:
        self._metrics = metrics
        self._folders: dict[str, Path] = {}
        if config.tensorboard.enabled:
            self._folders = {run.name: config.tensorboard_dir(run) for run in config.runs}
        self._writers: dict[str, tuple[int, BoardWriter]] = {}  # run -> its attempt's writer
        self._failing: set[str] = set()  # runs whose last write failed: said once, until healed
        self._stepless: set[str] = set()

    def start(self, store: Store, stopping: Callable[[], bool] = lambda: False) -> None:
        """Write every stored evaluation whose step its folder does not hold yet; a long
        history (TensorBoard just turned on) gives way to a stop request between entries."""
        for run in self._folders:
            with self._guarded(run):
                self._catch_up(store, run, stopping)

    def evaluated(self, store: Store, evaluation_id: int, evaluation: Evaluation) -> None:
        """Write one stored evaluation, after its rules have judged it; after a failure, every
        stored evaluation the folders lack (this one included). Only a ``StoreError`` comes
        out: the held write is then retried, as every store read and write is."""
        run = evaluation.run or ""
        if run in self._folders:
            with self._guarded(run):
                self._evaluated(store, run, evaluation_id, evaluation)

    def close(self) -> None:
        for _, writer in self._writers.values():
            writer.close()
        self._writers.clear()

    @contextlib.contextmanager
    def _guarded(self, run: str) -> Iterator[None]:
        """Whatever else goes wrong (a bug, a result it cannot read) is a failed write."""
        try:
            yield
        except StoreError:
            raise
        except Exception as error:
            log.debug("tensorboard failed", exc_info=True)
            self._failed(run, TensorBoardError(f"{type(error).__name__}: {error}"))

    def _evaluated(
        self, store: Store, run: str, evaluation_id: int, evaluation: Evaluation
    ) -> None:
        if evaluation.step is None:
            if run not in self._stepless:
                self._stepless.add(run)
                log.info("tensorboard: %s has no step; evaluations without one are not written",
                         evaluation.checkpoint)  # fmt: skip
            return
        if run in self._failing:
            self._catch_up(store, run)
            return
        attempt = store.current_attempt(run)  # the one this evaluation was just stored under
        verdicts = {d.rule: d.stop for d in store.decisions(run, evaluation_id)}
        entry = _entry(evaluation_id, evaluation.step, evaluation.to_dict(), verdicts,
                       store.stop_for(run, attempt))  # fmt: skip
        self._write(run, attempt, entry)

    def _catch_up(
        self, store: Store, run: str, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        by_attempt: dict[int, list[StoredEvaluation]] = {}
        for stored in store.evaluations(run):
            if stored.step is not None:
                by_attempt.setdefault(stored.attempt, []).append(stored)
        verdicts: dict[int, dict[str, bool]] | None = None
        for attempt, evaluations in sorted(by_attempt.items()):
            folder = attempt_folder(self._folders[run], attempt)
            try:
                done = written_steps(folder)
            except TensorBoardError as error:  # unreadable: writing again could only duplicate
                self._failed(run, error)
                return
            missing = [e for e in evaluations if e.step not in done]
            if not missing:
                continue
            stop = store.stop_for(run, attempt)
            verdicts = _verdicts_by_evaluation(store, run) if verdicts is None else verdicts
            for stored in missing:
                if stopping():
                    return  # the rest is written at the next start
                assert stored.step is not None
                entry = _entry(stored.id, stored.step, stored.result, verdicts.get(stored.id),
                               stop)  # fmt: skip
                if not self._write(run, attempt, entry):
                    return
            log.info("tensorboard: wrote %d stored evaluation(s) of run %s to %s",
                     len(missing), run, folder)  # fmt: skip

    def _writer(self, run: str, attempt: int) -> BoardWriter:
        """The attempt's writer; an earlier attempt's file is closed: it gets no more."""
        current = self._writers.get(run)
        if current is not None and current[0] == attempt:
            return current[1]
        if current is not None:
            current[1].close()
        writer = BoardWriter(attempt_folder(self._folders[run], attempt))
        self._writers[run] = (attempt, writer)
        return writer

    def _write(self, run: str, attempt: int, entry: BoardEntry) -> bool:
        writer = self._writer(run, attempt)
        try:
            writer.write(entry)
        except TensorBoardError as error:
            self._failed(run, error)
            return False
        if run in self._failing:
            self._failing.discard(run)
            log.info("tensorboard: writing run %s to %s again", run, writer.folder)
        return True

    def _failed(self, run: str, error: TensorBoardError) -> None:
        self._metrics.count_tensorboard_failure(run)
        if run in self._failing:
            log.debug("tensorboard: still not written: %s", error)
            return
        self._failing.add(run)
        log.error("tensorboard: events of run %s not written: %s; the evaluations are stored, "
                  "and are written once the next evaluation finds the folder writable", run,
                  error)  # fmt: skip


def _verdicts_by_evaluation(store: Store, run: str) -> dict[int, dict[str, bool]]:
    """The stored verdicts of every evaluation of ``run`` (the latest per rule)."""
    verdicts: dict[int, dict[str, bool]] = {}
    for decision in store.decisions(run):
        verdicts.setdefault(decision.evaluation_id, {})[decision.rule] = decision.stop
    return verdicts


def _entry(
    evaluation_id: int,
    step: int,
    result: Mapping[str, Any],
    verdicts: Mapping[str, bool] | None,
    stop: StoredStop | None,
) -> BoardEntry:
    """Evaluation ids grow in evaluation order, so the attempt's stop is raised at every later
    one of the attempt."""
    stopped = stop is not None and evaluation_id >= stop.evaluation_id
    reason = None
    if stop is not None and evaluation_id == stop.evaluation_id:
        reason = f"rule {stop.rule}: {stop.reason}"
    return BoardEntry(step, result, dict(verdicts or {}), stopped, reason)
