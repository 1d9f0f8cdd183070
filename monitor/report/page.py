"""The report's HTML page: one self-contained file that links the PNGs beside it.

No scripts, no external styles or fonts: it opens from a file system, an artifact store or
behind a locked-down web server alike. Every link is a bare file name in the same folder, and
every string taken from the store or the config is HTML-escaped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from monitor.report.history import RunHistory
from monitor.report.suspects import suspects_section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } .stop { background: #fde2e2; } .note { color: #555; }
"""

CAPTIONS = {
    "stiffness": "Mean within- and between-class stiffness against training step. Within-class "
    "stiffness is the mean of the class matrix's diagonal (pairs of distinct examples of one "
    "class); when it falls, gradient steps on one example help its classmates less: the model "
    "memorises rather than generalises. The dashed red line marks the stop.",
    "probe": "Loss and accuracy on the held-out probe (and on the probe's training split, with "
    "the labels the model was trained on, when the probe has one).",
    "heatmaps": "Class-stiffness matrices C(a, b) (cosine) at a few checkpoints: mean cosine "
    "between the loss gradients of examples of class a and of class b. A strong diagonal and "
    "weak off-diagonal means what the model learns from one example transfers to its class.",
    "sign_heatmaps": "The same matrices for sign stiffness (the share of pairs whose gradients "
    "agree, minus the share that disagree).",
    "distance": "Within-class (solid) and between-class (dotted) stiffness against the input "
    "distance 1 − cos(x1, x2), at the same checkpoints; dashed verticals mark the critical "
    "length, where within-class stiffness first crosses zero. Right: the critical length over "
    "training.",
}

ABSENT = {
    "sign_heatmaps": "Sign stiffness is computed in pair mode only (stiffness.mode: pair).",
    "distance": "Stiffness against input distance needs pair mode (stiffness.mode: pair); "
    "these evaluations were made in class mode, so the store holds no distance data.",
}


def _number(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def _figure(history: RunHistory, key: str, title: str) -> str:
    path = history.figures.get(key)
    if path is None:
        note = ABSENT.get(key, "no data for this figure")
        return f"<h3>{escape(title)}</h3>\n<p class='note'>Not drawn: {escape(note)}</p>"
    name = escape(Path(path).name, quote=True)
    return (
        f"<h3>{escape(title)}</h3>\n<figure><img src='{name}' alt='{escape(title, quote=True)}'>"
        f"<figcaption class='note'>{escape(CAPTIONS[key])}</figcaption></figure>"
    )


def _table(history: RunHistory) -> str:
    head = (
        "<tr><th>step</th><th>within-class</th><th>between-class</th><th>sign within</th>"
        "<th>probe loss</th><th>probe accuracy</th><th>critical length</th></tr>"
    )
    rows = []
    for step, result in zip(history.steps, history.results, strict=True):
        cosine, sign = result.get("cosine") or {}, result.get("sign") or {}
        distance = result.get("distance") or {}
        css = " class='stop'" if step == history.stop_step else ""
        cells = [
            str(step),
            _number(cosine.get("within")),
            _number(cosine.get("between")),
            _number(sign.get("within")),
            _number(result.get("probe_loss")),
            _number(result.get("probe_accuracy")),
            _number(distance.get("critical_length")),
        ]
        rows.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _run_section(history: RunHistory) -> str:
    if history.stop_step is None:
        verdict = "The rules have not stopped this run."
    else:
        verdict = (
            f"Stopped at step {history.stop_step} by rule {history.stop_rule}: "
            f"{history.stop_reason}"
        )
    attempt = f", attempt {history.attempt} of {history.attempts}" if history.attempts > 1 else ""
    parts = [
        f"<h2>run {escape(history.run)}{attempt}</h2>",
        f"<p>{len(history.steps)} evaluations, steps {history.steps[0]} to "
        f"{history.steps[-1]}. {escape(verdict)}</p>",
    ]
    if history.best is not None:
        best = history.best
        parts.append(
            f"<p class='best'>Best checkpoint: step {best['step']}, {escape(best['metric'])} "
            f"{best['value']:.4g} ({escape(str(best['path']))}); the dotted green line.</p>"
        )
    if history.unstepped:
        parts.append(
            f"<p class='note'>{history.unstepped} evaluation(s) without a training step are "
            "left out of the plots.</p>"
        )
    shown = ", ".join(str(step) for step in history.heatmap_steps)
    parts += [
        _figure(history, "stiffness", "Stiffness during training"),
        _figure(history, "probe", "Probe loss and accuracy"),
        _figure(history, "heatmaps", f"Class stiffness at steps {shown}"),
        _figure(history, "sign_heatmaps", f"Sign class stiffness at steps {shown}"),
        _figure(history, "distance", "Stiffness against input distance"),
        "<h3>Every evaluation</h3>",
        _table(history),
    ]
    parts.append(suspects_section(history))  # "" without gradient statistics
    return "\n".join(parts)


def render_page(histories: Sequence[RunHistory], config: Path, store: Path) -> str:
    """The whole page: a header naming the config and store, then one section per run."""
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sections = "\n".join(_run_section(history) for history in histories)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>stiffness-monitor report</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>stiffness-monitor report</h1>\n"
        f"<p class='note'>config {escape(str(config))}, store {escape(str(store))}, made {made}. "
        "Stiffness after Fort et al. 2019, <a href='https://arxiv.org/abs/1901.09491'>"
        "arXiv:1901.09491</a>.</p>\n"
        f"{sections}\n</body></html>\n"
    )
