"""Where each run stands: its attempt, its stop and its best checkpoint, as gauges.

Apart from ``metrics`` (the measurements of each evaluation) because these change when the
decision layer says so, not when a checkpoint is evaluated.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Gauge


class RunStateMetrics:
    """The gauges of each run's attempt, stop and best checkpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.early_stop = Gauge(
            "stiffness_early_stop",
            "1 once the rules have raised the stop signal for the run's current attempt, else 0",
            ["run"],
            registry=registry,
        )
        self.stop_pending = Gauge(
            "stiffness_stop_pending",
            "1 while the run's stop is raised but its stop file not yet written (retried every "
            "loop turn), else 0",
            ["run"],
            registry=registry,
        )
        self.attempt = Gauge(
            "stiffness_attempt",
            "The run's current attempt: 1, then one more for each rerun into its folder (its "
            "steps started again lower, or evaluated checkpoints were replaced) or reset",
            ["run"],
            registry=registry,
        )
        self.best_step = Gauge(
            "stiffness_best_checkpoint_step",
            "Training step of the current attempt's best checkpoint (NaN before any)",
            ["run"],
            registry=registry,
        )
        self.best_value = Gauge(
            "stiffness_best_checkpoint_value",
            "The metric value of the current attempt's best checkpoint (NaN before any); the "
            "metric is the rule set's best metric, in the label",
            ["run", "metric"],
            registry=registry,
        )

    def set_early_stop(self, run: str, stopped: bool) -> None:
        self.early_stop.labels(run=run).set(1 if stopped else 0)

    def set_stop_pending(self, run: str, pending: bool) -> None:
        self.stop_pending.labels(run=run).set(1 if pending else 0)

    def set_attempt(self, run: str, attempt: int) -> None:
        self.attempt.labels(run=run).set(attempt)

    def set_best(self, run: str, metric: str, step: int | None, value: float | None) -> None:
        """The best checkpoint's step and value; None (a new attempt) shows NaN."""
        self.best_step.labels(run=run).set(math.nan if step is None else step)
        for labels in list(self.best_value._metrics):  # one metric label per run at a time
            if labels[0] == run and labels[1] != metric:
                self.best_value.remove(*labels)
        self.best_value.labels(run=run, metric=metric).set(math.nan if value is None else value)
