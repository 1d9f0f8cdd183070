"""``stiffness-monitor report``: figures and one HTML page from the store.

It reads the store read-only (the daemon may be writing at the same time), draws each run's
curves, class-stiffness heatmaps at a few checkpoints and, in pair mode, stiffness against
input distance, and writes ``index.html`` beside the PNGs with relative links, so the folder
can be copied or served as it is. The data is gathered in ``history``, drawing lives in
``figures`` and the page in ``page``; this module puts them together.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from monitor.config.schema import load_config
from monitor.extras import require_demo_extra
from monitor.report.files import atomic_write
from monitor.report.history import RunHistory, load_histories
from monitor.rules.best import best_spec
from monitor.rules.spec import load_rules

DEFAULT_HEATMAPS = 4


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
    from monitor.report import figures  # matplotlib: imported only to draw

    chosen_steps = choose_steps(history.steps, wanted)
    by_step = dict(zip(history.steps, history.results, strict=True))
    chosen = [(step, by_step[step]) for step in chosen_steps]
    prefix = out / history.run
    best = None if history.best is None else history.best.get("step")
    drawn: dict[str, Path | None] = {
        "stiffness": figures.stiffness_figure(
            history.steps,
            history.results,
            history.stop_step,
            Path(f"{prefix}-stiffness.png"),
            best,
        ),
        "probe": figures.probe_figure(
            history.steps,
            history.results,
            history.stop_step,
            Path(f"{prefix}-probe.png"),
            best,
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
    attempt: int | None = None,
) -> Path:
    """Render the report for the config's store into ``out``; returns ``out/index.html``.

    Each run shows its latest attempt unless ``attempt`` is given."""
    require_demo_extra("matplotlib")
    from monitor.report.page import render_page

    config = load_config(config_path)
    rules = load_rules(config.rules, config.source)
    histories = load_histories(config.store.path, run, attempt, best_spec(rules))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [draw_run(history, folder, steps) for history in histories]
    page = folder / "index.html"
    atomic_write(page, render_page(drawn, config.source, config.store.path).encode("utf-8"))
    return page
