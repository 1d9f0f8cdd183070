"""``stiffness-monitor report``: figures and one HTML page from the store.

It reads the store read-only (the daemon may be writing at the same time), draws for each run
(or attempt) the curves of the metrics its rules read and of the other measurements, class-
stiffness heatmaps at a few checkpoints and, in pair mode, stiffness against input distance,
leaving out whatever has nothing to show, and with ``--compare`` one figure of every run and
attempt together. It writes ``index.html`` beside the PNGs with relative links, so the folder
can be copied or served as it is. The data is gathered in ``history``, the choice of panels is
``panels``, drawing lives in ``figures`` and the page in ``page`` and ``summary``; this module
puts them together.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from monitor.config.schema import load_config
from monitor.errors import UsageError
from monitor.extras import require_demo_extra
from monitor.report.files import atomic_write
from monitor.report.history import RunHistory, load_histories
from monitor.report.page import Comparison, render_page
from monitor.report.panels import Drawn, Panel, choose_panels, has_values, unread_metrics, values
from monitor.rules.best import best_spec
from monitor.rules.spec import RuleSet, check_metric, load_rules

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


CAPTIONS = {
    "classes": "Class-stiffness matrices C(a, b) (cosine) at steps {steps}: mean cosine between "
    "the loss gradients of examples of class a and of class b. A strong diagonal and weak "
    "off-diagonal means what the model learns from one example transfers to its class.",
    "classes-sign": "The same matrices for sign stiffness at steps {steps} (the share of pairs "
    "whose gradients agree, minus the share that disagree).",
    "distance": "Within-class (solid) and between-class (dotted) stiffness against the input "
    "distance 1 − cos(x1, x2), at steps {steps}; dashed verticals mark the critical length, "
    "where within-class stiffness first crosses zero.",
}
NO_CROSSING = (
    " Within-class stiffness stayed above zero at every measured distance at every "
    "checkpoint, so there is no critical length to show."
)


def _prefix(history: RunHistory, histories: Sequence[RunHistory]) -> str:
    """File names: the run's name, with the attempt when the page holds several of them."""
    several = sum(other.run == history.run for other in histories) > 1
    return f"{history.run}-attempt{history.attempt}" if several else history.run


def draw_run(
    history: RunHistory, out: Path, wanted: Sequence[int] | None, rules: RuleSet, prefix: str
) -> RunHistory:
    """Draw one history's figures into ``out`` (those with something to show); returns the
    history with them."""
    from monitor.report import figures  # matplotlib: imported only to draw

    best = None if history.best is None else history.best.get("step")
    read, rest = choose_panels(rules, history.results)

    def curve(panel: Panel) -> Drawn:
        path = out / f"{prefix}-{panel.key}.png"
        figures.curve_figure(panel, history.steps, history.results, path, history.stop_step, best)
        return Drawn(panel.key, panel.title, panel.caption, path, panel.read_by)

    chosen_steps = choose_steps(history.steps, wanted)
    by_step = dict(zip(history.steps, history.results, strict=True))
    chosen = [(step, by_step[step]) for step in chosen_steps]
    shown = ", ".join(str(step) for step in chosen_steps)
    others = [curve(panel) for panel in rest]
    for key, title, drawn in (
        ("classes", "class stiffness",
         figures.heatmaps_figure(chosen, out / f"{prefix}-classes.png")),
        ("classes-sign", "sign class stiffness",
         figures.heatmaps_figure(chosen, out / f"{prefix}-classes-sign.png", "sign")),
        ("distance", "stiffness against input distance",
         figures.distance_figure(chosen, out / f"{prefix}-distance.png")),
    ):  # fmt: skip
        if drawn is not None:
            caption = CAPTIONS[key].format(steps=shown)
            if key == "distance" and not has_values(history.results, "critical_length"):
                caption += NO_CROSSING
            others.append(Drawn(key, f"{title} at steps {shown}", caption, drawn))
    return replace(
        history,
        rule_figures=[curve(panel) for panel in read],
        other_figures=others,
        unread=unread_metrics(rules, history.results),
        heatmap_steps=chosen_steps,
    )


def draw_comparison(histories: Sequence[RunHistory], metric: str, out: Path) -> Comparison:
    """Every history's curve of ``metric`` on one pair of axes, stops and bests marked."""
    from monitor.report import figures

    curves = [
        figures.Curve(
            history.label,
            history.steps,
            values(history.results, metric),
            history.stop_step,
            None if history.best is None else history.best.get("step"),
        )
        for history in histories
    ]
    path = out / f"compare-{metric.replace(':', '-')}.png"
    figures.comparison_figure(f"{metric} of each run and attempt", metric, curves, path)
    return Comparison(metric, path, histories)


def write_report(
    config_path: Path | str,
    out: Path | str,
    run: str | None = None,
    steps: Sequence[int] | None = None,
    attempt: int | None = None,
    every_attempt: bool = False,
    compare: bool = False,
    compare_metric: str | None = None,
) -> Path:
    """Render the report for the config's store into ``out``; returns ``out/index.html``.

    Each run shows its latest attempt unless ``attempt`` is given, or every attempt with
    ``every_attempt``. ``compare`` adds the overview of every history on the page with their
    curves of ``compare_metric`` (default: the metric that picks the best checkpoint) on
    shared axes; without ``attempt``, it compares every attempt of each run."""
    require_demo_extra("matplotlib")
    config = load_config(config_path)
    rules = load_rules(config.rules, config.source)
    metric = compare_metric or best_spec(rules).metric
    if compare_metric is not None:
        try:
            check_metric(compare_metric)
        except ValueError as error:
            raise UsageError(f"--compare {compare_metric}: {error}") from None
    every = every_attempt or (compare and attempt is None)
    histories = load_histories(config.store.path, run, attempt, best_spec(rules), every)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = [_prefix(history, histories) for history in histories]
    drawn = [
        draw_run(history, folder, steps, rules, prefix)
        for history, prefix in zip(histories, prefixes, strict=True)
    ]
    comparison = draw_comparison(drawn, metric, folder) if compare else None
    page = folder / "index.html"
    html = render_page(drawn, config.source, config.store.path, comparison)
    atomic_write(page, html.encode("utf-8"))
    return page
