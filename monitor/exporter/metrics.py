"""The Prometheus metrics the daemon exports: the core set dashboards and alerts rely on.

Names, labels and units are an interface (DESIGN §4, docs/metrics.md): prefix ``stiffness_``,
base units, ``_total`` for counters, ``run`` on every per-run series. The metrics live in their
own registry (never the process-global one) so tests and embedded uses get a clean slate, and
the daemon updates them only through the methods below, which take plain values. The process,
platform and garbage-collector collectors sit on that registry too, so one scrape carries what
an operator expects from any Python exporter. What the rule series show is read from the
engine's state in ``rule_readings``; the HTTP side is ``server``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from monitor import __version__
from monitor.exporter.rule_readings import rule_readings
from monitor.exporter.run_state import RunStateMetrics
from monitor.exporter.statistics_metrics import StatisticsMetrics
from monitor.rules.spec import RuleSet

log = logging.getLogger("monitor.metrics")

#: Evaluation durations range from well under a second (small models, CPU) to minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def _torch_version() -> str:
    """From package metadata: importing torch only to label a metric would cost seconds."""
    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def _number(value: float | int | None) -> float:
    """Prometheus has no null: an unknown value is exported as NaN."""
    return math.nan if value is None else float(value)


class MonitorMetrics:
    """The daemon's metrics, registered on one registry (a fresh one unless given)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, per_class_limit: int = 20
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.per_class_limit = per_class_limit
        self.is_ready = False
        self._said_suppressed = False
        self._class_labels: dict[str, set[str]] = {}
        self._rule_labels: dict[str, set[str]] = {}
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        build = Info("stiffness_build", "Versions of stiffness-monitor, Python and torch "
                     "in this process (the value is always 1)", registry=r)  # fmt: skip
        build.info({"version": __version__, "python": platform.python_version(),
                    "torch": _torch_version()})  # fmt: skip

        def gauge(name: str, help_text: str, labels: Sequence[str] = ("run",)) -> Gauge:
            return Gauge(name, help_text, labels, registry=r)

        def counter(name: str, help_text: str, labels: Sequence[str] = ("run",)) -> Counter:
            return Counter(name, help_text, labels, registry=r)

        self.ready = gauge(
            "stiffness_ready",
            "1 while /readyz answers 200 (loaded, every watcher alive, the loop turning, the "
            "store committing), else 0",
            (),
        )
        self.store_writable = gauge(
            "stiffness_store_writable", "0 while the store cannot commit (a full disk), else 1", ()
        )
        self.store_write_failures = counter(
            "stiffness_store_write_failures_total",
            "Store commits that failed (retried with back-off; the work is kept in memory)",
            (),
        )
        self.store_writable.set(1)
        self.within = gauge(
            "stiffness_within_class",
            "Within-class cosine gradient stiffness (macro mean of the class-matrix diagonal) "
            "at the latest evaluated checkpoint",
        )
        self.between = gauge(
            "stiffness_between_class",
            "Between-class cosine gradient stiffness (macro mean of the off-diagonal) at the "
            "latest evaluated checkpoint",
        )
        self.probe_loss = gauge(
            "stiffness_probe_loss",
            "Mean cross-entropy on the held-out probe set at the latest checkpoint",
        )
        self.probe_accuracy = gauge(
            "stiffness_probe_accuracy",
            "Accuracy (0..1) on the held-out probe set at the latest checkpoint",
        )
        self.step = gauge(
            "stiffness_checkpoint_step", "Training step of the latest evaluated checkpoint"
        )
        self.run_state = RunStateMetrics(r)  # attempt, stop and best checkpoint
        self.statistics = StatisticsMetrics(r)  # the training split's gradient statistics
        self.early_stop = self.run_state.early_stop
        self.stop_pending = self.run_state.stop_pending
        self.discovered = counter(
            "stiffness_checkpoints_discovered",
            "Complete checkpoints found and queued for evaluation (those evaluated before a "
            "restart are not counted again)",
        )
        self.evaluated = counter(
            "stiffness_checkpoints_evaluated", "Checkpoints evaluated successfully"
        )
        self.errors = counter(
            "stiffness_checkpoint_errors",
            "Checkpoints that could not be evaluated, by reason",
            ("run", "reason"),
        )
        self.skipped = counter(
            "stiffness_checkpoints_skipped",
            "Checkpoints skipped without evaluation (reason backlog-latest: passed over by the "
            "'latest' backlog policy)",
            ("run", "reason"),
        )
        self.tensorboard_failures = counter(
            "stiffness_tensorboard_write_failures",
            "TensorBoard writes that failed (full disk, permissions, a symlink where the folder "
            "should be); the evaluations stay stored and are written once a write works again",
        )
        self.duration = Histogram(
            "stiffness_evaluation_duration_seconds",
            "Wall time to load and evaluate one checkpoint",
            ["run"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_depth = gauge(
            "stiffness_queue_depth", "Complete checkpoints waiting to be evaluated"
        )
        self.last_evaluation = gauge(
            "stiffness_last_evaluation_timestamp_seconds",
            "Unix time of the latest successful evaluation",
        )
        self.class_within = gauge(
            "stiffness_class_within",
            "One class's within-class cosine stiffness (its diagonal entry of the class matrix) "
            "at the latest checkpoint; exported while classes <= metrics.per_class_limit",
            ("run", "class"),
        )
        self.rule_value = gauge(
            "stiffness_rule_value",
            "The smoothed value a rule watches, after the latest evaluation (NaN before any)",
            ("run", "rule"),
        )
        self.rule_best = gauge(
            "stiffness_rule_best",
            "The best smoothed value a decline rule has seen so far (NaN before any)",
            ("run", "rule"),
        )
        self.rule_wait = gauge(
            "stiffness_rule_wait",
            "Consecutive evaluations counting toward a rule's patience",
            ("run", "rule"),
        )

    def set_ready(self, ready: bool) -> None:
        self.is_ready = ready
        self.ready.set(1 if ready else 0)

    def add_run(self, run: str) -> None:
        """Create the run's series at zero, so dashboards and alerts see them before data."""
        self.early_stop.labels(run=run).set(0)
        self.queue_depth.labels(run=run).set(0)
        self.evaluated.labels(run=run)
        self.discovered.labels(run=run)
        self.tensorboard_failures.labels(run=run)

    def observe_evaluation(
        self,
        run: str,
        *,
        step: int | None,
        within: float | None,
        between: float | None,
        probe_loss: float | None,
        probe_accuracy: float | None,
        duration: float,
        finished_at: float,
    ) -> None:
        for gauge, value in (
            (self.within, within),
            (self.between, between),
            (self.probe_loss, probe_loss),
            (self.probe_accuracy, probe_accuracy),
            (self.step, step),
        ):
            gauge.labels(run=run).set(_number(value))
        self.evaluated.labels(run=run).inc()
        self.duration.labels(run=run).observe(duration)
        self.last_evaluation.labels(run=run).set(finished_at)

    def set_class_within(
        self, run: str, classes: Sequence[int], values: Sequence[float | None]
    ) -> None:
        """Each class's diagonal entry, unless there are more classes than the limit allows."""
        if len(classes) > self.per_class_limit:
            if not self._said_suppressed:
                self._said_suppressed = True
                log.info(
                    "per-class series not exported: %d classes > metrics.per_class_limit %d",
                    len(classes), self.per_class_limit,
                )  # fmt: skip
            return
        labels = {str(label) for label in classes}
        for stale in self._class_labels.get(run, set()) - labels:
            self.class_within.remove(run, stale)
        self._class_labels[run] = labels
        for label, value in zip(classes, values, strict=True):
            self.class_within.labels(run=run, **{"class": str(label)}).set(_number(value))

    def set_rule_states(
        self, run: str, rules: RuleSet, states: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Export every leaf rule's state; series of rules no longer in the set are removed."""
        readings = rule_readings(rules, states)
        names = {reading.rule for reading in readings}
        for stale in self._rule_labels.get(run, set()) - names:
            for gauge in (self.rule_value, self.rule_best, self.rule_wait):
                # The kind may have had no such series: prometheus-client < 0.22 raises then.
                with contextlib.suppress(KeyError):
                    gauge.remove(run, stale)
        self._rule_labels[run] = names
        for reading in readings:
            self.rule_value.labels(run=run, rule=reading.rule).set(_number(reading.value))
            if reading.has_best:
                self.rule_best.labels(run=run, rule=reading.rule).set(_number(reading.best))
            if reading.wait is not None:
                self.rule_wait.labels(run=run, rule=reading.rule).set(reading.wait)

    def count_discovered(self, run: str) -> None:
        self.discovered.labels(run=run).inc()

    def count_error(self, run: str, reason: str) -> None:
        self.errors.labels(run=run, reason=reason).inc()

    def count_tensorboard_failure(self, run: str) -> None:
        self.tensorboard_failures.labels(run=run).inc()

    def count_skipped(self, run: str, reason: str) -> None:
        self.skipped.labels(run=run, reason=reason).inc()

    def set_queue_depth(self, run: str, depth: int) -> None:
        self.queue_depth.labels(run=run).set(depth)

    def set_store_writable(self, writable: bool) -> None:
        self.store_writable.set(1 if writable else 0)

    def count_store_failure(self) -> None:
        self.store_write_failures.inc()

    def set_early_stop(self, run: str, stopped: bool) -> None:
        self.run_state.set_early_stop(run, stopped)

    def set_stop_pending(self, run: str, pending: bool) -> None:
        self.run_state.set_stop_pending(run, pending)
