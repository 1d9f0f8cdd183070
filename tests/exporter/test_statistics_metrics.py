"""The training split's gradient statistics reach /metrics: a real evaluation (an MLP on a
probe with a training split, ``statistics`` on) exported the way the daemon exports it, then
scraped; a run without them gets no series, and one that stops measuring them gets NaN."""

from __future__ import annotations

import math

import torch
from torch import nn

from monitor.daemon.outcomes import export_evaluation
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.tensorboard import BoardEntry, scalars
from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness
from tests.daemon_harness import metric_value
from tests.exporter.test_metrics import scrape

GAUGES = {
    "stiffness_gradient_disparity": "gradient_disparity",
    "stiffness_gsnr": "gsnr",
    "stiffness_gsnr_median": "gsnr_median",
    "stiffness_opposing_share": "opposing_share",
}


def evaluation(run: str, statistics: bool) -> Evaluation:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    inputs = torch.randn(30, 5)
    probe = ProbeSet(inputs, torch.arange(30) % 3, torch.arange(30) % 2 == 0)
    result = compute_stiffness(model, probe, EngineOptions(statistics=statistics))
    return Evaluation(f"{run}/step_1.pt", "state_dict", 1, "name", result, run)


def test_statistics_are_exported_per_run() -> None:
    metrics = MonitorMetrics()
    measured = evaluation("a", statistics=True)
    export_evaluation(metrics, measured, 0.5)
    export_evaluation(metrics, evaluation("b", statistics=False), 0.5)
    text = scrape(metrics)
    stats = measured.result.statistics
    assert stats is not None and stats.gsnr is not None
    for gauge, field in GAUGES.items():
        assert metric_value(text, gauge, run="a") == getattr(stats, field), gauge
        assert metric_value(text, gauge, run="b") is None, gauge  # never measured: no series
    export_evaluation(metrics, evaluation("a", statistics=False), 0.5)
    later = scrape(metrics)
    for gauge in GAUGES:
        value = metric_value(later, gauge, run="a")
        assert value is not None and math.isnan(value), gauge  # not a stale value


def test_tensorboard_writes_them_as_scalars() -> None:
    measured = evaluation("a", statistics=True).result
    written = scalars(BoardEntry(step=1, result=measured.to_dict()))
    stats = measured.statistics
    assert stats is not None
    for field in GAUGES.values():
        assert written[f"statistics/{field}"] == getattr(stats, field), field
    plain = scalars(BoardEntry(step=1, result=evaluation("b", statistics=False).result.to_dict()))
    assert not any(tag.startswith("statistics/") for tag in plain)
