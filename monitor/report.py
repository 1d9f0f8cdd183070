"""``stiffness-monitor report``: figures and one HTML page from the store.

It reads the store read-only (the daemon may be writing at the same time), draws each run's
curves, class-stiffness heatmaps at a few checkpoints and, in pair mode, stiffness against
input distance, and writes ``index.html`` beside the PNGs with relative links, so the folder
can be copied or served as it is. The data is gathered here; drawing lives in
``report_figures`` and the page in ``report_html``.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from monitor.config import load_config
from monitor.demo_trainer import require_demo_extra
from monitor.errors import MonitorError
from monitor.store import Store

DEFAULT_HEATMAPS = 4


class ReportError(MonitorError):
    """Nothing to report: the store holds no evaluations (for that run)."""


class UnknownRunError(ReportError):
    """``--run`` names a run the store does not know (a usage problem)."""


@dataclass(frozen=True)
class RunHistory:
    """One run's evaluations with a step, in step order, and its stop if one was raised."""

    run: str
    steps: list[int]
    results: list[dict[str, Any]]
    stop_step: int | None = None
    stop_rule: str | None = None
    stop_reason: str | None = None
    unstepped: int = 0  # evaluations without a step cannot be placed on the x axis
    figures: dict[str, Path | None] = field(default_factory=dict)
    heatmap_steps: list[int] = field(default_factory=list)


def load_histories(store_path: Path, run: str | None = None) -> list[RunHistory]:
    """Every run's history (or ``run``'s); a clear error when there is nothing to draw."""
    with Store(store_path, readonly=True) as store:
        runs = store.runs()
        if run is not None and run not in runs:
            known = ", ".join(runs) or "none"
            raise UnknownRunError(f"--run {run}: no such run in {store_path} (runs: {known})")
        histories = []
        for name in [run] if run is not None else runs:
            evaluations = store.evaluations(name)
            stepped = [e for e in evaluations if e.step is not None]
            stop = store.stop_for(name)
            if not stepped:
                continue
            histories.append(
                RunHistory(
                    run=name,
                    steps=[int(e.step) for e in stepped if e.step is not None],
                    results=[e.result for e in stepped],
                    stop_step=None if stop is None else _int(stop.payload.get("step")),
                    stop_rule=None if stop is None else stop.rule,
                    stop_reason=None if stop is None else stop.reason,
                    unstepped=len(evaluations) - len(stepped),
                )
            )
    if not histories:
        where = f"run {run!r} in " if run is not None else ""
        raise ReportError(
            f"{store_path}: no evaluations with a step in {where}the store yet; run "
            "`stiffness-monitor watch` until it has evaluated some checkpoints"
        )
    return histories


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def choose_steps(
    steps: Sequence[int], wanted: Sequence[int] | None = None, count: int = DEFAULT_HEATMAPS
) -> list[int]:
    """The evaluated steps nearest to ``wanted``, or ``count`` spread evenly over the run."""
    if not steps:
        return []
    if not wanted:
        if len(steps) <= count:
            return list(steps)
        last = len(steps) - 1
        return sorted({steps[round(i * last / (count - 1))] for i in range(count)})
    chosen = set()
    for target in wanted:
        index = bisect.bisect_left(steps, target)
        near = [steps[i] for i in (index - 1, index) if 0 <= i < len(steps)]
        chosen.add(min(near, key=lambda step: (abs(step - target), step)))
    return sorted(chosen)


def draw_run(history: RunHistory, out: Path, wanted: Sequence[int] | None) -> RunHistory:
    """Draw one run's figures into ``out``; returns the history with its figure paths."""
    from monitor import report_figures as figures

    chosen_steps = choose_steps(history.steps, wanted)
    by_step = dict(zip(history.steps, history.results, strict=True))
    chosen = [(step, by_step[step]) for step in chosen_steps]
    prefix = out / history.run
    drawn: dict[str, Path | None] = {
        "stiffness": figures.stiffness_figure(
            history.steps, history.results, history.stop_step, Path(f"{prefix}-stiffness.png")
        ),
        "probe": figures.probe_figure(
            history.steps, history.results, history.stop_step, Path(f"{prefix}-probe.png")
        ),
        "heatmaps": figures.heatmaps_figure(chosen, Path(f"{prefix}-classes.png")),
        "sign_heatmaps": figures.heatmaps_figure(
            chosen, Path(f"{prefix}-classes-sign.png"), "sign"
        ),
        "distance": figures.distance_figure(
            chosen, history.steps, history.results, Path(f"{prefix}-distance.png")
        ),
    }
    return replace(history, figures=drawn, heatmap_steps=chosen_steps)


def write_report(
    config_path: Path | str,
    out: Path | str,
    run: str | None = None,
    steps: Sequence[int] | None = None,
) -> Path:
    """Render the report for the config's store into ``out``; returns ``out/index.html``."""
    require_demo_extra("matplotlib")
    from monitor.report_html import render_page

    config = load_config(config_path)
    histories = load_histories(config.store.path, run)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [draw_run(history, folder, steps) for history in histories]
    page = folder / "index.html"
    atomic_write(page, render_page(drawn, config.source, config.store.path).encode("utf-8"))
    return page


def atomic_write(path: Path, payload: bytes) -> None:
    """Write a new file beside ``path`` and rename it over ``path``: a reader (a browser, a
    web server) never sees half a page, and a symlink planted at either name is never
    followed (the temporary name is fresh, opened with O_EXCL and O_NOFOLLOW)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
