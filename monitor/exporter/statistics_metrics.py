"""The training split's gradient statistics as gauges, one series per run.

Apart from ``metrics`` so that module stays small; the same contract (prefix ``stiffness_``,
base units, label ``run``). A statistic that was not measured at the latest checkpoint (no
training split in the probe, ``stiffness.statistics`` off, or undefined) is exported as NaN,
as every other unknown value is.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Gauge

#: disparity, gsnr, gsnr_median, opposing_share; None where undefined.
Values = tuple[float | None, float | None, float | None, float | None]


class StatisticsMetrics:
    """Gradient disparity, GSNR (mean and median) and the opposing share, per run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._runs: set[str] = set()

        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, ["run"], registry=registry)

        self.disparity = gauge(
            "stiffness_gradient_disparity",
            "Gradient disparity (Forouzesh & Thiran 2021): distance between the mean "
            "per-example gradients of two fixed halves of the probe's training split",
        )
        self.gsnr = gauge(
            "stiffness_gsnr",
            "Gradient signal-to-noise ratio (Liu et al. 2020) over the probe's training split: "
            "mean over parameters of mean(g)^2 / var(g)",
        )
        self.gsnr_median = gauge(
            "stiffness_gsnr_median",
            "Median over parameters of the gradient signal-to-noise ratio on the training split",
        )
        self.opposing_share = gauge(
            "stiffness_opposing_share",
            "Share (0..1) of the probe's training examples whose gradient opposes their "
            "labelled class (negative mean cosine to classmates)",
        )

    def set(self, run: str, values: Values | None) -> None:
        """(disparity, gsnr, gsnr_median, opposing_share) at the run's latest checkpoint, or
        None when it measured none: a run that never had them gets no series, one that had
        them gets NaN (not a stale value)."""
        if values is None and run not in self._runs:
            return
        self._runs.add(run)
        gauges = (self.disparity, self.gsnr, self.gsnr_median, self.opposing_share)
        for gauge, value in zip(gauges, values or (None,) * 4, strict=True):
            gauge.labels(run=run).set(math.nan if value is None else float(value))
