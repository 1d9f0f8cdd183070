"""The best checkpoint of one run's current attempt: tracked, exported, and kept in a file.

The rules decide when to stop; this decides which checkpoint to keep (``rules.best``). Each new
best is set on the ``stiffness_best_checkpoint_*`` gauges and written to ``stop.best_file``
for the trainer (``best_checkpoint(run_dir)``, the callbacks' ``restore_best_weights``). A
write that fails is one log line and one ``best-file`` count; the next new best tries again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monitor.config.schema import MonitorConfig, RunConfig
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.best import BestCheckpoint, BestTracker, best_spec
from monitor.rules.spec import RuleSet
from monitor.stopping.best_file import best_payload, write_best_file
from monitor.stopping.stop_file import StopSignalError, remove_earlier_attempt, stop_file_path

log = logging.getLogger("monitor.decisions")


class BestKeeper:
    """Tracks one run's best checkpoint for its current attempt."""

    def __init__(
        self, run: RunConfig, rules: RuleSet, config: MonitorConfig, metrics: MonitorMetrics
    ) -> None:
        self.run, self.metrics = run.name, metrics
        self.spec = best_spec(rules)
        template = config.stop.best_file
        self.file: Path | None = None
        if template is not None:
            self.file = stop_file_path(template, run.name, run.path, config.base_dir)
        self.attempt = 1
        self._tracker = BestTracker(self.spec)
        self._failing = False

    @property
    def best(self) -> BestCheckpoint | None:
        return self._tracker.best

    def begin(self, attempt: int) -> None:
        """A new attempt: no best yet, and the earlier attempt's file is removed."""
        self.attempt = attempt
        self._tracker = BestTracker(self.spec)
        self.metrics.run_state.set_best(self.run, self.spec.metric, None, None)
        if self.file is not None and remove_earlier_attempt(self.file, self.run, attempt):
            log.info("removed the best-checkpoint file %s of an earlier attempt", self.file)

    def replay(self, step: int | None, result: dict[str, object], path: str) -> None:
        """Rebuild from the stored history at start-up (no file written per evaluation)."""
        self._tracker.observe(step, result, path)

    def publish(self) -> None:
        """Set the gauges to the current best and write its file."""
        best = self._tracker.best
        step, value = (None, None) if best is None else (best.step, best.value)
        self.metrics.run_state.set_best(self.run, self.spec.metric, step, value)
        if best is None or self.file is None:
            return
        try:
            write_best_file(self.file, best_payload(self.run, self.attempt, best.to_dict()))
        except StopSignalError as error:
            if not self._failing:
                self.metrics.count_error(self.run, "best-file")
                log.error("best-checkpoint file not written: %s", error)
            self._failing = True
            return
        if self._failing:
            log.info("best-checkpoint file %s written again", self.file)
        self._failing = False

    def observe(self, step: int | None, result: dict[str, object], path: str) -> None:
        """One new evaluation; published when it is the new best."""
        if self._tracker.observe(step, result, path) or self._failing:
            self.publish()
