"""The report's figures: matplotlib on the headless Agg backend, one PNG per question.

Each function draws from plain stored results (``evaluate --json`` objects in step order) and
returns the file it wrote, or None when the store holds nothing to draw for it (the page then
says why). matplotlib is the ``demo`` extra: it is imported here, and this module is imported
only when a report is rendered.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a training node or in CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monitor.report.files import atomic_write

Result = dict[str, Any]
DPI = 110
WITHIN, BETWEEN = "tab:blue", "tab:orange"


def _get(result: Result, *keys: str) -> float | None:
    """A nested value (``_get(r, "cosine", "within")``), None where any level is missing."""
    value: Any = result
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def _series(results: Sequence[Result], *keys: str) -> list[float]:
    return [float("nan") if (v := _get(r, *keys)) is None else v for r in results]


def _has(results: Sequence[Result], *keys: str) -> bool:
    return any(_get(r, *keys) is not None for r in results)


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


def stiffness_figure(
    steps: Sequence[int],
    results: Sequence[Result],
    stop_step: int | None,
    path: Path,
    best_step: int | None = None,
) -> Path:
    """Within- and between-class stiffness against step: cosine, sign, train-val."""
    panels: list[tuple[str, tuple[str, ...]]] = [("cosine stiffness (val-val)", ("cosine",))]
    if _has(results, "sign", "within"):
        panels.append(("sign stiffness (val-val)", ("sign",)))
    if _has(results, "pair_sets", "train-val", "cosine", "within"):
        panels.append(("cosine stiffness (train-val)", ("pair_sets", "train-val", "cosine")))
    figure, axes_row = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False, layout="constrained"
    )
    errors = _series(results, "uncertainty", "within_class")
    for axes, (title, keys) in zip(axes_row[0], panels, strict=True):
        within = _series(results, *keys, "within")
        if keys == ("cosine",) and any(e == e for e in errors):
            axes.errorbar(
                steps,
                within,
                yerr=errors,
                color=WITHIN,
                marker="o",
                markersize=3,
                capsize=2,
                label="within-class (±1 s.e.)",
            )
        else:
            axes.plot(steps, within, color=WITHIN, marker="o", markersize=3, label="within-class")
        between = _series(results, *keys, "between")
        axes.plot(steps, between, color=BETWEEN, marker="s", markersize=3, label="between-class")
        axes.axhline(0.0, color="grey", linewidth=0.8)
        _mark_stop(axes, stop_step, best_step)
        axes.set(title=title, xlabel="training step", ylabel="mean stiffness")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def probe_figure(
    steps: Sequence[int],
    results: Sequence[Result],
    stop_step: int | None,
    path: Path,
    best_step: int | None = None,
) -> Path:
    """Probe loss and accuracy against step (held-out, and the training split when present)."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10.4, 4), layout="constrained")
    for axes, key, label in (
        (loss_axes, "loss", "cross-entropy"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        axes.plot(
            steps,
            _series(results, f"probe_{key}"),
            marker="o",
            markersize=3,
            color="tab:green",
            label="held-out probe",
        )
        if _has(results, f"train_probe_{key}"):
            axes.plot(
                steps,
                _series(results, f"train_probe_{key}"),
                marker="^",
                markersize=3,
                color="tab:purple",
                linestyle=":",
                label="training split",
            )
        _mark_stop(axes, stop_step, best_step)
        axes.set(title=f"probe {key}", xlabel="training step", ylabel=label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def heatmaps_figure(
    chosen: Sequence[tuple[int, Result]], path: Path, kind: str = "cosine"
) -> Path | None:
    """Class-stiffness matrices at the chosen checkpoints, one colour scale for all of them."""
    matrices = [(step, r[kind]["matrix"], r["classes"]) for step, r in chosen if r.get(kind)]
    if not matrices:
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


def distance_figure(
    chosen: Sequence[tuple[int, Result]],
    steps: Sequence[int],
    results: Sequence[Result],
    path: Path,
) -> Path | None:
    """Stiffness against input distance at the chosen checkpoints, and the critical length."""
    curves = [(step, r["distance"]) for step, r in chosen if r.get("distance")]
    if not curves:
        return None
    figure, (curve_axes, length_axes) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    colours = plt.get_cmap("viridis")
    for index, (step, distance) in enumerate(curves):
        edges = distance["edges"]
        centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        colour = colours(index / max(1, len(curves) - 1))
        within = [float("nan") if v is None else v for v in distance["within"]]
        between = [float("nan") if v is None else v for v in distance["between"]]
        curve_axes.plot(
            centres, within, color=colour, marker="o", markersize=3, label=f"step {step}: within"
        )
        curve_axes.plot(
            centres, between, color=colour, linestyle=":", label=f"step {step}: between"
        )
        if distance.get("critical_length") is not None:
            curve_axes.axvline(distance["critical_length"], color=colour, linestyle="--")
    curve_axes.axhline(0.0, color="grey", linewidth=0.8)
    curve_axes.set(
        title="cosine stiffness against input distance",
        xlabel="input distance 1 − cos(x1, x2)",
        ylabel="mean stiffness in bin",
    )
    curve_axes.legend(fontsize="x-small", ncol=2)
    curve_axes.grid(alpha=0.3)
    lengths = _series(results, "distance", "critical_length")
    length_axes.plot(steps, lengths, marker="o", markersize=3, color="tab:red")
    if all(v != v for v in lengths):  # NaN everywhere: nothing to plot, say so in the panel
        farthest = max(r["distance"]["edges"][-1] for r in results if r.get("distance"))
        length_axes.text(
            0.5,
            0.5,
            "within-class stiffness stayed above zero\nat every "
            f"measured distance (up to {farthest:.2f})\nat every checkpoint",
            ha="center",
            va="center",
            transform=length_axes.transAxes,
        )
        length_axes.set_xlim(min(steps), max(steps) + 1)
        length_axes.set_yticks([])
    length_axes.set(
        title="critical length (within-class stiffness crosses 0)",
        xlabel="training step",
        ylabel="input distance 1 − cos(x1, x2)",
    )
    length_axes.grid(alpha=0.3)
    return _save(figure, path)
