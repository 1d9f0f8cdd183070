"""The decision layer for one run: rules over its history, stored verdicts, the stop signal.

Rule state is rebuilt by replaying the run's stored evaluations (in the order they were
evaluated) whenever rules are (re)loaded: at start-up and on SIGHUP. Replay is cheap (a few
floats per evaluation) and always agrees with the stored history, even after a crash between
storing an evaluation and storing its verdicts. Each verdict, the rules' state and a stop are
written in one transaction. A stop is raised once per run and never retracted: the store
keeps it, the metric stays at 1, and the stop file is never rewritten once the operator has
removed it (deleting it is how an operator lets a run continue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.config.schema import MonitorConfig, RunConfig
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.engine import RuleEngine
from monitor.rules.spec import RuleSet
from monitor.rules.spec import rule_name as rule_name_of
from monitor.stopping.on_stop import run_on_stop
from monitor.stopping.stop_file import (
    StopSignal,
    StopSignalError,
    stop_file_path,
    write_stop_file,
)
from monitor.store.store import Store

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
        history = sorted(store.evaluations(run.name), key=lambda stored: stored.id)
        for stored in history:
            self.engine.observe(stored.step, stored.result)
        raised = store.stop_for(run.name)
        metrics.set_early_stop(run.name, raised is not None)
        if raised is not None:
            present = "present" if self.stop_file.exists() else "removed"
            log.info(
                "run %s was stopped earlier by rule %s (stop file %s)",
                run.name, raised.rule, present,
            )  # fmt: skip
        elif history and self.engine.stopped:
            # Reloaded rules that would have stopped on the stored history stop the run now.
            latest = history[-1]
            self._raise(latest.id, latest.step, latest.path, self.engine.state())

    def observe(self, evaluation_id: int, evaluation: Evaluation) -> None:
        """Judge one stored evaluation, store the verdicts, raise the stop if it is new."""
        decisions = self.engine.observe(evaluation.step, evaluation.to_dict())
        with self.store.transaction():
            self.store.record_decisions(self.run.name, evaluation_id, decisions)
            self.store.save_rule_states(self.run.name, self.engine.state())
        if any(d.stop for d in decisions) and self.store.stop_for(self.run.name) is None:
            self._raise(evaluation_id, evaluation.step, evaluation.checkpoint, self.engine.state())

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
        )
        if not self.store.record_stop(
            self.run.name, evaluation_id, point.rule, point.reason, signal.to_dict()
        ):
            return
        self.metrics.set_early_stop(self.run.name, True)
        fields = {"run": self.run.name, "rule": point.rule, "file": str(self.stop_file)}
        log.warning(
            "early stop for run %s at step %s: %s",
            self.run.name, signal.step, point.reason, extra={"fields": fields},
        )  # fmt: skip
        try:
            write_stop_file(self.stop_file, signal)
        except StopSignalError as error:
            self.metrics.count_error(self.run.name, "stop-file")
            log.error("stop file not written: %s", error)
        if self.config.stop.on_stop:  # once per run: record_stop above guards it
            run_on_stop(  # blocks up to on_stop_timeout; logs its own failure
                self.config.stop.on_stop, signal, self.config.stop.on_stop_timeout, self.stop_file
            )
