"""The decision layer for one run: rules over its history, stored verdicts, the stop signal.

Rule state is rebuilt by replaying the run's stored evaluations (in the order they were
evaluated) whenever rules are (re)loaded: at start-up and on SIGHUP. Replay is cheap (a few
floats per evaluation) and always agrees with the stored history, even after a crash between
storing an evaluation and storing its verdicts. Each verdict, the rules' state and a stop are
written in one transaction. A stop is raised once per run and never retracted: the store
keeps it, the metric stays at 1, and the stop file is never rewritten once the operator has
removed it (deleting it is how an operator lets a run continue). A rerun into the same folder
is a new *attempt* (``attempts``): it starts with fresh rules, no stop and no best checkpoint.

The stop is committed before its file is written, and stays pending in the store until the
file is there: a write that fails (full disk, permissions, I/O error) or a kill between the
two is retried on every turn of the loop and at start-up, never lost, and never mistaken for
an operator's removal. ``on_stop`` usually tells a scheduler that the file exists, so it runs
right after the file is first written and noted, never while the file is missing, and at
most once: a crash between noting the file and running the command skips it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.config.schema import MonitorConfig, RunConfig
from monitor.daemon.best_keeper import BestKeeper
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.engine import RuleEngine
from monitor.rules.spec import RuleSet
from monitor.rules.spec import rule_name as rule_name_of
from monitor.stopping.on_stop import run_on_stop
from monitor.stopping.stop_file import (
    StopSignal,
    StopSignalError,
    remove_earlier_attempt,
    stop_file_path,
    write_stop_file,
)
from monitor.store.store import Store, StoreError

log = logging.getLogger("monitor.decisions")


def _tracked(
    rules: RuleSet, rule_name: str, state: Mapping[str, Any]
) -> tuple[str, float | None, float | None]:
    """The metric, current (smoothed) value and best value behind a rule's verdict.

    Combinators nest their sub-rules' states; the first sub-rule that tracks a metric speaks
    for the stop file.
    """
    spec = next((r for i, r in enumerate(rules.rules) if rule_name_of(r, i) == rule_name), None)
    metric = getattr(spec, "metric", None)
    if metric is None and spec is not None:
        metrics = getattr(spec, "metrics", None) or [
            getattr(sub, "metric", None) for sub in getattr(spec, "rules", [])
        ]
        metric = next((m for m in metrics if m), "")
    found = _first_tracked_state(state) or {}
    value = found.get("smoothed", found.get("value"))
    return str(metric or ""), _number(value), _number(found.get("best"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _first_tracked_state(state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if "smoothed" in state:
        return state
    for value in state.values():
        if isinstance(value, Mapping):
            found = _first_tracked_state(value)
            if found is not None:
                return found
        if isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping) and (found := _first_tracked_state(item)):
                    return found
    return None


class RunDecisions:
    """Rules, stored verdicts and the stop signal of one run."""

    def __init__(
        self,
        run: RunConfig,
        rules: RuleSet,
        config: MonitorConfig,
        store: Store,
        metrics: MonitorMetrics,
    ) -> None:
        self.run, self.rules, self.config = run, rules, config
        self.store, self.metrics = store, metrics
        self.stop_file: Path = stop_file_path(config.stop.file, run.name, run.path, config.base_dir)
        self.engine = RuleEngine(rules)
        self.best = BestKeeper(run, rules, config, metrics)
        self._pending: StopSignal | None = None  # stored, its stop file not written yet
        self._failures = 0  # failed writes of the pending stop: the first is logged and counted
        self._resumed = False  # pending when this object was built: say so once it is written
        self.attempt = store.current_attempt(run.name)
        self.best.attempt = self.attempt
        metrics.run_state.set_attempt(run.name, self.attempt)
        history = sorted(store.evaluations(run.name, self.attempt), key=lambda e: e.id)
        for stored in history:
            self.engine.observe(stored.step, stored.result)
            self.best.replay(stored.step, stored.result, stored.path)
        self.best.publish()
        raised = store.stop_for(run.name, self.attempt)
        metrics.set_early_stop(run.name, raised is not None)
        metrics.set_stop_pending(run.name, raised is not None and raised.pending)
        if raised is not None:
            if raised.pending:
                state = "pending: raised but not written yet; writing it now"
            else:  # written once: absent now means the operator let the run go on
                state = "present" if self.stop_file.exists() else "removed"
            log.info(
                "run %s was stopped earlier by rule %s (stop file %s)",
                run.name, raised.rule, state,
            )  # fmt: skip
            if raised.pending:
                self._pending, self._resumed = StopSignal.from_dict(raised.payload), True
                with contextlib.suppress(StoreError):  # written, not noted: the loop notes it
                    self.retry_pending_stop()
        elif history and self.engine.stopped:
            # Reloaded rules that would have stopped on the stored history stop the run now.
            latest = history[-1]
            self._raise(latest.id, latest.step, latest.path, self.engine.state())

    @property
    def stop_pending(self) -> bool:
        """True while the run's stop is stored but its stop file is not written yet."""
        return self._pending is not None

    def observe(self, evaluation_id: int, evaluation: Evaluation) -> None:
        """Judge one stored evaluation, store the verdicts, raise the stop if it is new."""
        self.follow_attempt()
        result = evaluation.to_dict()
        decisions = self.engine.observe(evaluation.step, result)
        with self.store.transaction():
            self.store.record_decisions(self.run.name, evaluation_id, decisions)
            self.store.save_rule_states(self.run.name, self.engine.state())
        self.best.observe(evaluation.step, result, evaluation.checkpoint)
        stopped = self.store.stop_for(self.run.name, self.attempt) is not None
        if any(d.stop for d in decisions) and not stopped:
            self._raise(evaluation_id, evaluation.step, evaluation.checkpoint, self.engine.state())

    def follow_attempt(self) -> bool:
        """Start afresh when the store holds a newer attempt (a rerun was detected, or
        ``stiffness-monitor reset``): new rule state, no stop, no best, and the earlier
        attempt's stop and best files removed. True when a new attempt began here."""
        current = self.store.current_attempt(self.run.name)
        if current == self.attempt:
            return False
        why = self.store.attempts(self.run.name)[-1].reason
        log.warning(
            "run %s: attempt %d begins (%s); rules, history, best checkpoint and stop start "
            "afresh", self.run.name, current, why,
            extra={"fields": {"run": self.run.name, "attempt": current}},
        )  # fmt: skip
        self.attempt = current
        self.engine = RuleEngine(self.rules)
        self._pending, self._failures, self._resumed = None, 0, False
        self.metrics.run_state.set_attempt(self.run.name, current)
        self.metrics.set_early_stop(self.run.name, False)
        self.metrics.set_stop_pending(self.run.name, False)
        self.best.begin(current)
        if remove_earlier_attempt(self.stop_file, self.run.name, current):
            log.info("removed the stop file %s of an earlier attempt", self.stop_file)
        return True

    def retry_pending_stop(self) -> None:
        """Write the stop file of a stop raised but not written yet; nothing when none is.

        The loop calls it once per turn, so a folder that becomes writable again gets its
        file without waiting for another checkpoint. The first failure is logged and counted,
        later ones only at debug level. Raises ``StoreError`` when the file is written but the
        store cannot note it: the next call finds the same file there and notes it then.
        """
        signal = self._pending
        if signal is None:
            return
        try:
            write_stop_file(self.stop_file, signal)  # an identical file there counts as written
        except StopSignalError as error:
            self._failures += 1
            if self._failures == 1:
                self.metrics.count_error(self.run.name, "stop-file")
                log.error(
                    "stop file not written: %s; the stop for run %s stays pending and is retried "
                    "every turn", error, self.run.name,
                )  # fmt: skip
            else:
                log.debug("stop file still not written: %s", error)
            return
        first = self.store.mark_stop_written(self.run.name, self.attempt)
        self._pending = None
        self.metrics.set_stop_pending(self.run.name, False)
        if self._failures or self._resumed:
            log.info(
                "stop for run %s no longer pending: stop file %s written (%d failed "
                "attempt(s) by this daemon)", self.run.name, self.stop_file, self._failures,
            )  # fmt: skip
        if first and self.config.stop.on_stop:  # once per run: only the first mark is True
            run_on_stop(  # blocks up to on_stop_timeout; logs its own failure
                self.config.stop.on_stop, signal, self.config.stop.on_stop_timeout, self.stop_file
            )

    def _raise(
        self,
        evaluation_id: int,
        step: int | None,
        checkpoint: str,
        states: Mapping[str, Mapping[str, Any]],
    ) -> None:
        names = self.engine.names  # on a tie the rule earlier in the file speaks, as in replay
        point = min(self.engine.stopped.values(), key=lambda p: (p.index, names.index(p.rule)))
        metric, value, best = _tracked(self.rules, point.rule, states[point.rule])
        signal = StopSignal(
            run=self.run.name,
            checkpoint=checkpoint,
            step=step if step is not None else point.index,
            rule=point.rule,
            reason=point.reason,
            metric=metric,
            value=value,
            best=best,
            attempt=self.attempt,
            best_checkpoint=None if self.best.best is None else self.best.best.to_dict(),
        )
        if not self.store.record_stop(self.run.name, evaluation_id, point.rule, point.reason,
                                      signal.to_dict(), self.attempt):  # fmt: skip
            return
        self._pending = signal  # committed: from here a failed write is retried, not lost
        self.metrics.set_early_stop(self.run.name, True)
        self.metrics.set_stop_pending(self.run.name, True)
        fields = {"run": self.run.name, "rule": point.rule, "file": str(self.stop_file)}
        log.warning(
            "early stop for run %s at step %s: %s",
            self.run.name, signal.step, point.reason, extra={"fields": fields},
        )  # fmt: skip
        self.retry_pending_stop()
