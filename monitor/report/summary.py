"""The part of the report a person reads first: the stop, the best checkpoint, what the stop
saved, and why the rules stopped, as a short list.

"Saved" counts what ``backtest`` counts as ``evaluations_saved``: the attempt's evaluations
after the stop's, in evaluation order, i.e. the training that stopping there leaves out. A
trainer that acts on the stop file ends within an evaluation or so of it; then the saving is
the rest of the training it had planned, which the monitor never sees, and the page says so
rather than invent a number. Every string from the store is HTML-escaped.
"""

from __future__ import annotations

from html import escape

from monitor.report.history import RunHistory
from monitor.report.reasons import ReasonItem, split_reason
from monitor.rules.readings import missing_hint


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _value(value: float) -> str:
    return f"{value:.4g}"


def stop_line(history: RunHistory) -> str:
    if history.stop_rule is None:
        return (
            "<li class='stop'><b>Stop</b>: none. The rules have not stopped this "
            f"{'attempt' if history.attempts > 1 else 'run'} ("
            f"{_plural(history.evaluations, 'evaluation')}, steps {history.steps[0]} to "
            f"{history.last_step}).</li>"
        )
    where = f"step {history.stop_step}" if history.stop_step is not None else "an unknown step"
    checkpoint = ""
    if history.stop_checkpoint is not None:
        checkpoint = f", <code>{escape(history.stop_checkpoint)}</code>"
    return (
        f"<li class='stop'><b>Stop</b>: {where}, rule <code>{escape(history.stop_rule)}</code> "
        f"(evaluation {history.stop_number} of {history.evaluations}{checkpoint}); the dashed "
        "red line.</li>"
    )


def best_line(history: RunHistory) -> str:
    best = history.best
    if best is None:
        return "<li class='best'><b>Best checkpoint</b>: none (no finite value to judge).</li>"
    lowest = "lowest" if best["mode"] == "min" else "highest"
    before = ""
    if history.stop_step is not None and best["step"] is not None:
        gap = history.stop_step - int(best["step"])
        before = f", {_plural(gap, 'step')} before the stop" if gap > 0 else ", at the stop"
    return (
        f"<li class='best'><b>Best checkpoint</b>: step {best['step']}, "
        f"<code>{escape(str(best['metric']))}</code> {_value(best['value'])} ({lowest}"
        f"{before}), <code>{escape(str(best['path']))}</code>; the dotted green line.</li>"
    )


def saved_line(history: RunHistory) -> str:
    saved = history.saved_evaluations
    if saved is None:
        return "<li class='saved'><b>Saved</b>: nothing yet; there is no stop.</li>"
    if saved == 0:
        return (
            "<li class='saved'><b>Saved</b>: no evaluation came after the stop; the run ended "
            "there. What it saved is the rest of the training the trainer had planned, which "
            "the monitor does not see.</li>"
        )
    steps = ""
    if history.stop_step is not None and history.last_step is not None:
        steps = f" ({_plural(history.last_step - history.stop_step, 'step')}, to step "
        steps += f"{history.last_step})"
    return (
        f"<li class='saved'><b>Saved</b>: {_plural(saved, 'evaluation')}{steps} came after the "
        "stop: the training that stopping there leaves out (what <code>backtest</code> reports "
        "as <code>evaluations_saved</code>). If the trainer ended on the stop file, it also "
        "saved the rest of the training it had planned, which the monitor does not see.</li>"
    )


def _reason_items(items: tuple[ReasonItem, ...]) -> str:
    rows = []
    for item in items:
        verdict = "stop" if item.stop else "go on"
        nested = _reason_items(item.children) if item.children else ""
        rows.append(
            f"<li class='{'says-stop' if item.stop else 'says-go-on'}'><code>"
            f"{escape(item.rule)}</code> ({verdict}): {escape(item.text)}{nested}</li>"
        )
    return f"<ul>{''.join(rows)}</ul>"


def reason_list(history: RunHistory) -> str:
    """The stop reason as nested items: the rule, then each sub-rule's part."""
    if history.stop_rule is None or history.stop_reason is None:
        return ""
    tree = split_reason(history.stop_rule, history.stop_reason)
    return (
        "<h3>Why it stopped</h3>\n<div class='reason'>"
        f"{_reason_items((tree,))}</div>"
    )  # fmt: skip


def unread_notes(history: RunHistory) -> str:
    """A line for each metric a rule reads that these evaluations never have: such a rule
    cannot fire on this run."""
    if not history.unread:
        return ""
    items = "".join(
        f"<li><code>{escape(metric)}</code>: no value at any evaluation"
        f"{escape(missing_hint(metric))}, so rules reading it cannot fire here.</li>"
        for metric in history.unread
    )
    return f"<ul class='unread'>{items}</ul>"


def summary_section(history: RunHistory) -> str:
    """The summary at the head of a run's part of the page."""
    facts = stop_line(history) + best_line(history) + saved_line(history)
    return (
        f"<div class='summary'>\n<ul class='facts'>{facts}</ul>\n"
        f"{reason_list(history)}{unread_notes(history)}\n</div>"
    )
