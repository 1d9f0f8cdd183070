"""The Prometheus metrics the daemon exports: the core set dashboards and alerts rely on.

Names, labels and units are an interface (DESIGN §4): prefix ``stiffness_``, base units,
``_total`` for counters, ``run`` on every per-run series. The metrics live in their own
registry (never the process-global one) so tests and embedded uses get a clean slate, and the
daemon updates them only through the methods below, which take plain values.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Evaluation durations range from well under a second (small models, CPU) to minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class MonitorMetrics:
    """The daemon's metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.within = Gauge(
            "stiffness_within_class",
            "Within-class cosine gradient stiffness (macro mean of the class-matrix diagonal) "
            "at the latest evaluated checkpoint",
            ["run"],
            registry=r,
        )
        self.between = Gauge(
            "stiffness_between_class",
            "Between-class cosine gradient stiffness (macro mean of the off-diagonal) at the "
            "latest evaluated checkpoint",
            ["run"],
            registry=r,
        )
        self.probe_loss = Gauge(
            "stiffness_probe_loss",
            "Mean cross-entropy on the held-out probe set at the latest checkpoint",
            ["run"],
            registry=r,
        )
        self.probe_accuracy = Gauge(
            "stiffness_probe_accuracy",
            "Accuracy (0..1) on the held-out probe set at the latest checkpoint",
            ["run"],
            registry=r,
        )
        self.step = Gauge(
            "stiffness_checkpoint_step",
            "Training step of the latest evaluated checkpoint",
            ["run"],
            registry=r,
        )
        self.early_stop = Gauge(
            "stiffness_early_stop",
            "1 once the rules have raised the stop signal for the run, else 0",
            ["run"],
            registry=r,
        )
        self.evaluated = Counter(
            "stiffness_checkpoints_evaluated",
            "Checkpoints evaluated successfully",
            ["run"],
            registry=r,
        )
        self.errors = Counter(
            "stiffness_checkpoint_errors",
            "Checkpoints that could not be evaluated, by reason",
            ["run", "reason"],
            registry=r,
        )
        self.skipped = Counter(
            "stiffness_checkpoints_skipped",
            "Checkpoints skipped without evaluation (backlog policy 'latest', deleted), by reason",
            ["run", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "stiffness_evaluation_duration_seconds",
            "Wall time to load and evaluate one checkpoint",
            ["run"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "stiffness_queue_depth",
            "Complete checkpoints waiting to be evaluated",
            ["run"],
            registry=r,
        )
        self.last_evaluation = Gauge(
            "stiffness_last_evaluation_timestamp_seconds",
            "Unix time of the latest successful evaluation",
            ["run"],
            registry=r,
        )

    def add_run(self, run: str) -> None:
        """Create the run's series at zero, so dashboards and alerts see them before data."""
        self.early_stop.labels(run=run).set(0)
        self.queue_depth.labels(run=run).set(0)
        self.evaluated.labels(run=run)

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
            gauge.labels(run=run).set(float("nan") if value is None else value)
        self.evaluated.labels(run=run).inc()
        self.duration.labels(run=run).observe(duration)
        self.last_evaluation.labels(run=run).set(finished_at)

    def count_error(self, run: str, reason: str) -> None:
        self.errors.labels(run=run, reason=reason).inc()

    def count_skipped(self, run: str, reason: str) -> None:
        self.skipped.labels(run=run, reason=reason).inc()

    def set_queue_depth(self, run: str, depth: int) -> None:
        self.queue_depth.labels(run=run).set(depth)

    def set_early_stop(self, run: str, stopped: bool) -> None:
        self.early_stop.labels(run=run).set(1 if stopped else 0)


def serve_metrics(
    metrics: MonitorMetrics, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` (port 0 picks a free one: ``server.server_port``)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, thread
