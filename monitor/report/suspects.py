"""The report's "Suspect labels" section: training examples whose gradient opposes their class.

With ``stiffness.statistics`` and a probe with a training split, each stored evaluation keeps
``statistics.suspect_labels``: training examples (by their index in the probe file, with the
label the trainer used) whose mean gradient cosine to their labelled classmates is negative,
most negative first. A label the model can only fit by memorising shows up there; one that
stays listed checkpoint after checkpoint is worth a look. The section shows the latest
evaluation's list and, per example, at how many of the run's evaluations it was listed.
Absent (an empty string) when no evaluation of the run has statistics.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from monitor.report.history import RunHistory


def _statistics(result: dict[str, Any]) -> dict[str, Any] | None:
    found = result.get("statistics")
    return found if isinstance(found, dict) else None


def _number(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{float(value):.4g}"


def suspects_section(history: RunHistory) -> str:
    """The section's HTML for one run, or "" when none of its evaluations has statistics."""
    measured = [
        (step, stats)
        for step, result in zip(history.steps, history.results, strict=True)
        if (stats := _statistics(result)) is not None
    ]
    if not measured:
        return ""
    listed: Counter[tuple[int, int]] = Counter()
    for _, stats in measured:
        for suspect in stats.get("suspect_labels") or []:
            listed[(int(suspect["index"]), int(suspect["label"]))] += 1
    step, latest = measured[-1]
    summary = (
        f"At step {step}: {_number(latest.get('opposing_share'))} of "
        f"{int(latest.get('examples') or 0)} training examples oppose their class; gradient "
        f"disparity {_number(latest.get('gradient_disparity'))}, GSNR "
        f"{_number(latest.get('gsnr'))} (median {_number(latest.get('gsnr_median'))})."
    )
    suspects = latest.get("suspect_labels") or []
    if not suspects:
        return f"<h3>Suspect labels</h3>\n<p>{escape(summary)} No suspect labels.</p>"
    head = (
        "<tr><th>probe index</th><th>label</th><th>mean cosine to classmates</th>"
        f"<th>listed at (of {len(measured)} evaluations)</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{int(s['index'])}</td><td>{int(s['label'])}</td><td>{_number(s['cosine'])}"
        f"</td><td>{listed[(int(s['index']), int(s['label']))]}</td></tr>"
        for s in suspects
    )
    return (
        f"<h3>Suspect labels</h3>\n<p>{escape(summary)}</p>\n<table>{head}{rows}</table>\n"
        "<p class='note'>Training examples whose loss gradient points against those of the other "
        "examples with the same label (negative mean cosine), most negative first: candidates "
        "for a wrong label that the model can only memorise.</p>"
    )
