"""The report's HTML page: one self-contained file that links the PNGs beside it.

What a reader needs first comes first: for each run (or attempt) the summary (stop, best
checkpoint, what the stop saved, why it stopped), then the curves of the metrics the rules
read, then the other measurements, then every evaluation as a table. With ``--compare`` an
overview of every run and attempt on the page, with their curves on shared axes, comes before
them all. Figures with nothing to show were never drawn and are simply not on the page.

No scripts, no external styles or fonts: it opens from a file system, an artifact store or
behind a locked-down web server alike. Every link is a bare file name in the same folder, and
every string taken from the store or the config is HTML-escaped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from monitor.report.history import RunHistory
from monitor.report.panels import BEST_READER, Drawn
from monitor.report.summary import summary_section
from monitor.report.suspects import suspects_section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; flex: 1 1 560px; max-width: 100%; }
.wide { flex-basis: 100% !important; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } .stop { background: #fde2e2; } .best { background: #e2f5e2; }
.note, figcaption { color: #555; } .summary { background: #fafafa; padding: 0.2em 1em; }
.facts li { margin: 0.3em 0; } .says-go-on { color: #666; }
"""


@dataclass(frozen=True)
class Comparison:
    """The overview of several runs or attempts: one figure of one metric, and the histories."""

    metric: str
    figure: Path
    histories: Sequence[RunHistory]


def _number(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def _read_by(names: Sequence[str]) -> str:
    rules = [f"<code>{escape(name)}</code>" for name in names if name != BEST_READER]
    parts = (
        [f"Read by {'rule' if len(rules) == 1 else 'rules'} {', '.join(rules)}"] if rules else []
    )
    if BEST_READER in names:
        parts.append("picks the best checkpoint")
    return "; ".join(parts) + ". " if parts else ""


def _figure(drawn: Drawn) -> str:
    name = escape(drawn.path.name, quote=True)
    wide = " class='wide'" if drawn.key in ("classes", "classes-sign") else ""
    return (
        f"<figure id='{escape(drawn.path.stem, quote=True)}'{wide}>"
        f"<img src='{name}' alt='{escape(drawn.title, quote=True)}'>"
        f"<figcaption>{_read_by(drawn.read_by)}{escape(drawn.caption)}</figcaption></figure>"
    )


def _figures(title: str, drawn: Sequence[Drawn], css: str) -> str:
    if not drawn:
        return ""
    inner = "\n".join(_figure(item) for item in drawn)
    return f"<h3>{escape(title)}</h3>\n<div class='figures {css}'>\n{inner}\n</div>"


COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("within-class", ("cosine", "within")),
    ("between-class", ("cosine", "between")),
    ("sign within", ("sign", "within")),
    ("probe loss", ("probe_loss",)),
    ("probe accuracy", ("probe_accuracy",)),
    ("critical length", ("distance", "critical_length")),
)


def _get(result: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = result
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _table(history: RunHistory) -> str:
    """Every evaluation; columns with no value at any evaluation are left out."""
    cells = [[_number(_get(r, keys)) for r in history.results] for _, keys in COLUMNS]
    kept = [i for i, column in enumerate(cells) if any(cell != "–" for cell in column)]
    head = "<tr><th>step</th>" + "".join(f"<th>{COLUMNS[i][0]}</th>" for i in kept) + "</tr>"
    best = None if history.best is None else history.best.get("step")
    rows = []
    for row, step in enumerate(history.steps):
        css = " class='stop'" if step == history.stop_step else ""
        css = " class='best'" if not css and step == best else css
        values = "".join(f"<td>{cells[i][row]}</td>" for i in kept)
        rows.append(f"<tr{css}><td>{step}</td>{values}</tr>")
    return f"<table class='evaluations'>{head}{''.join(rows)}</table>"


def run_section(history: RunHistory) -> str:
    """One run's (or attempt's) part of the page, its summary first."""
    parts = [
        f"<section class='run' id='run-{escape(history.run, quote=True)}-{history.attempt}'>",
        f"<h2>run {escape(history.label)}</h2>",
        summary_section(history),
        _figures("What the rules read", history.rule_figures, "rules"),
        _figures("Other measurements", history.other_figures, "others"),
    ]
    if history.unstepped:
        parts.append(
            f"<p class='note'>{history.unstepped} evaluation(s) without a training step are "
            "left out of the plots.</p>"
        )
    parts += ["<h3>Every evaluation</h3>", _table(history)]
    parts += [suspects_section(history), "</section>"]  # "" without gradient statistics
    return "\n".join(part for part in parts if part)


def comparison_section(comparison: Comparison) -> str:
    """The overview: a row per run or attempt, then their curves of one metric together."""
    rows = []
    for h in comparison.histories:
        best = h.best or {}
        stop = "–" if h.stop_rule is None else f"step {h.stop_step} ({escape(h.stop_rule)})"
        value = "–" if best.get("value") is None else f"{float(best['value']):.4g}"
        saved = "–" if h.saved_evaluations is None else str(h.saved_evaluations)
        rows.append(
            f"<tr><td>{escape(h.run)}</td><td>{h.attempt}</td><td>{h.evaluations}</td>"
            f"<td>{stop}</td><td>{best.get('step', '–')}</td><td>{value}</td><td>{saved}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>run</th><th>attempt</th><th>evaluations</th><th>stop</th><th>best step</th>"
        "<th>best value</th><th>evaluations saved</th></tr>"
    )
    name = escape(comparison.figure.name, quote=True)
    metric = escape(comparison.metric)
    return (
        f"<section class='comparison' id='comparison'>\n<h2>Comparison: {metric}</h2>\n"
        f"<table class='compare'>{head}{''.join(rows)}</table>\n"
        f"<figure class='compare'><img src='{name}' alt='{metric} of every run and attempt'>"
        f"<figcaption><code>{metric}</code> of each run and attempt on shared axes; × marks "
        "each one's stop, ★ its best checkpoint, in its colour.</figcaption></figure>\n"
        "</section>"
    )


def render_page(
    histories: Sequence[RunHistory],
    config: Path,
    store: Path,
    comparison: Comparison | None = None,
) -> str:
    """The whole page: the comparison (when asked for), one section per run or attempt each
    led by its summary, and a footer naming the config and store."""
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    body = [] if comparison is None else [comparison_section(comparison)]
    body += [run_section(history) for history in histories]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>stiffness-monitor report</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>stiffness-monitor report</h1>\n"
        + "\n".join(body)
        + f"\n<footer class='note'><p>config {escape(str(config))}, store "
        f"{escape(str(store))}, made {made}. Stiffness after Fort et al. 2019, "
        "<a href='https://arxiv.org/abs/1901.09491'>arXiv:1901.09491</a>.</p></footer>\n"
        "</body></html>\n"
    )
