"""The report's figures: matplotlib on the headless Agg backend, one PNG per question.

Each function draws from plain stored results (``evaluate --json`` objects in step order) and
returns the file it wrote, or None when there is nothing to draw (the page then leaves the
figure out). matplotlib is the ``demo`` extra: it is imported here, and this module is imported
only when a report is rendered.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite, nan
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a training node or in CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monitor.report.files import atomic_write
from monitor.report.panels import Panel, values
from monitor.rules.readings import standard_error
from monitor.rules.spec import METRICS_WITH_ERRORS

Result = dict[str, Any]
DPI = 110


@dataclass(frozen=True)
class Curve:
    """One run's or attempt's values of the compared metric, with its stop and best steps."""

    label: str
    steps: list[int]
    values: list[float]
    stop_step: int | None
    best_step: int | None


def _errors(results: Sequence[Result], metric: str) -> list[float] | None:
    """Each evaluation's standard error for ``metric`` (NaN where none), or None if none has one."""
    if metric not in METRICS_WITH_ERRORS:
        return None
    errors = [standard_error(r, metric) for r in results]
    return None if all(e is None for e in errors) else [nan if e is None else e for e in errors]


def _mark_stop(axes: Axes, stop_step: int | None, best_step: int | None = None) -> None:
    """The stop (red dashed) and the best checkpoint (green dotted) on a curve over steps."""
    if stop_step is not None:
        axes.axvline(stop_step, color="tab:red", linestyle="--", linewidth=1.2, label="stop")
    if best_step is not None:
        axes.axvline(best_step, color="tab:green", linestyle=":", linewidth=1.4, label="best")


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:  # closed even when saving fails: pyplot keeps every open figure alive
        plt.close(figure)
    atomic_write(path, buffer.getvalue())
    return path


def curve_figure(
    panel: Panel,
    steps: Sequence[int],
    results: Sequence[Result],
    path: Path,
    stop_step: int | None = None,
    best_step: int | None = None,
) -> Path:
    """One panel's series against training step, with the stop, the best checkpoint and any
    threshold a rule compares the metric with."""
    figure, axes = plt.subplots(figsize=(6.2, 3.9), layout="constrained")
    for series in panel.series:
        style: dict[str, Any] = {"color": series.colour, "marker": series.marker, "markersize": 3}
        line = values(results, series.metric)
        errors = _errors(results, series.metric)
        if errors is not None:
            label = f"{series.label} (±1 s.e.)"
            axes.errorbar(steps, line, yerr=errors, capsize=2, label=label, **style)
        else:
            axes.plot(steps, line, linestyle=series.linestyle, label=series.label, **style)
    for bound, label in panel.thresholds:
        axes.axhline(bound, color="tab:gray", linestyle="-.", linewidth=1.0, label=label)
    if panel.zero_line:
        axes.axhline(0.0, color="grey", linewidth=0.8)
    _mark_stop(axes, stop_step, best_step)
    axes.set(title=panel.title, xlabel="training step", ylabel=panel.ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _contrast(matrices: Sequence[Any]) -> bool:
    """Whether the matrices hold two different finite values: a matrix that is one number
    everywhere (1.0, say) has nothing to show as a heatmap."""
    seen: set[float] = set()
    for matrix in matrices:
        for row in matrix:
            seen.update(float(v) for v in row if v is not None and isfinite(v))
            if len(seen) > 1:
                return True
    return False


def heatmaps_figure(
    chosen: Sequence[tuple[int, Result]], path: Path, kind: str = "cosine"
) -> Path | None:
    """Class-stiffness matrices at the chosen checkpoints, one colour scale for all of them;
    None when there are none, or they are one value everywhere."""
    matrices = [(step, r[kind]["matrix"], r["classes"]) for step, r in chosen if r.get(kind)]
    if not _contrast([matrix for _, matrix, _ in matrices]):
        return None
    figure, axes_row = plt.subplots(
        1,
        len(matrices),
        figsize=(3.6 * len(matrices) + 1.2, 3.8),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for axes, (step, matrix, classes) in zip(axes_row[0], matrices, strict=True):
        values = [[float("nan") if v is None else v for v in row] for row in matrix]
        image = axes.imshow(values, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ticks = range(len(classes))
        axes.set_xticks(ticks, [str(c) for c in classes], fontsize="small")
        axes.set_yticks(ticks, [str(c) for c in classes], fontsize="small")
        axes.set(title=f"step {step}", xlabel="class of x2", ylabel="class of x1")
    assert image is not None
    figure.colorbar(image, ax=axes_row[0].tolist(), shrink=0.85, label=f"{kind} stiffness")
    return _save(figure, path)


def distance_figure(chosen: Sequence[tuple[int, Result]], path: Path) -> Path | None:
    """Stiffness against input distance at the chosen checkpoints, with each critical length
    (the critical length over training is a curve panel of its own); None without data."""
    curves = [(step, r["distance"]) for step, r in chosen if r.get("distance")]
    if not curves:
        return None
    figure, axes = plt.subplots(figsize=(7.4, 4.2), layout="constrained")
    colours = plt.get_cmap("viridis")
    for index, (step, distance) in enumerate(curves):
        edges = distance["edges"]
        centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        colour = colours(index / max(1, len(curves) - 1))
        within = [nan if v is None else v for v in distance["within"]]
        between = [nan if v is None else v for v in distance["between"]]
        axes.plot(
            centres, within, color=colour, marker="o", markersize=3, label=f"step {step}: within"
        )
        axes.plot(centres, between, color=colour, linestyle=":", label=f"step {step}: between")
        if distance.get("critical_length") is not None:
            axes.axvline(distance["critical_length"], color=colour, linestyle="--")
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set(
        title="cosine stiffness against input distance",
        xlabel="input distance 1 − cos(x1, x2)",
        ylabel="mean stiffness in bin",
    )
    axes.legend(fontsize="x-small", ncol=2)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def comparison_figure(title: str, ylabel: str, curves: Sequence[Curve], path: Path) -> Path:
    """Several runs' or attempts' curves of one metric on shared axes, each with its stop (×)
    and its best checkpoint (★) in its own colour."""
    figure, axes = plt.subplots(figsize=(9.6, 4.8), layout="constrained")
    colours = plt.get_cmap("tab10")
    for index, curve in enumerate(curves):
        colour = colours(index % 10)
        axes.plot(curve.steps, curve.values, color=colour, marker="o", markersize=2.5,
                  label=curve.label)  # fmt: skip
        for step, marker, size in ((curve.best_step, "*", 14), (curve.stop_step, "X", 9)):
            if step is not None and step in curve.steps:
                value = curve.values[curve.steps.index(step)]
                axes.plot([step], [value], linestyle="none", marker=marker, markersize=size,
                          color=colour, markeredgecolor="black", markeredgewidth=0.6)  # fmt: skip
    axes.plot([], [], "X", color="grey", markeredgecolor="black", label="stop")
    axes.plot([], [], "*", color="grey", markeredgecolor="black", markersize=10, label="best")
    axes.set(title=title, xlabel="training step", ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)
