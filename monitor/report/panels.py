"""Which curves a report draws, in which order, and which it leaves out.

A reader opens the report to see why the rules stopped (or did not stop) a run, so the panels
that show a metric one of the config's rules reads come first, each saying which rules read
it, then the other measurements. Values are read with the rules' own reader
(``rules.readings.metric_value``), so a panel plots exactly what the rule judged.

A panel with nothing to show is left out, not drawn empty: a series with no finite value at
any checkpoint is dropped (sign stiffness in class mode, the train-val pair set without a
training split, a critical length that never exists), a panel with no series left is dropped,
and a panel no rule reads whose every series is flat over the whole run is dropped too (a
constant line says one number, which the table of evaluations already shows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from monitor.rules.best import best_spec
from monitor.rules.readings import metric_value
from monitor.rules.spec import CLASS_METRIC, AllRule, AnyRule, RuleSet, ThresholdRule, rule_name

WITHIN, BETWEEN, PROBE, TRAIN = "tab:blue", "tab:orange", "tab:green", "tab:purple"
BEST_READER = "the best checkpoint"


@dataclass(frozen=True)
class Series:
    """One curve: a rule metric, its legend label and how it looks."""

    metric: str
    label: str
    colour: str
    marker: str = "o"
    linestyle: str = "-"


@dataclass(frozen=True)
class Panel:
    """One figure of curves over training steps: its file key, words, and what reads it."""

    key: str
    title: str
    ylabel: str
    series: tuple[Series, ...]
    caption: str
    zero_line: bool = False
    read_by: tuple[str, ...] = ()
    thresholds: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class Drawn:
    """A figure written for the page: its PNG, title, caption and the rules that read it."""

    key: str
    title: str
    caption: str
    path: Path
    read_by: tuple[str, ...] = ()


def _pair(prefix: str, within: str, between: str) -> tuple[Series, ...]:
    return (
        Series(within, f"{prefix}within-class", WITHIN),
        Series(between, f"{prefix}between-class", BETWEEN, marker="s"),
    )


STIFFNESS_CAPTION = (
    "Mean within- and between-class stiffness against training step (error bars: ±1 standard "
    "error over probe examples, where the evaluation carries one). Within-class stiffness is "
    "the mean of the class matrix's diagonal; when it falls, gradient steps on one example "
    "help its classmates less: the model memorises rather than generalises."
)
CATALOGUE: tuple[Panel, ...] = (
    Panel("stiffness", "cosine stiffness (val-val)", "mean stiffness",
          _pair("", "within_class", "between_class"), STIFFNESS_CAPTION, zero_line=True),
    Panel("sign", "sign stiffness (val-val)", "mean stiffness",
          _pair("", "sign_within_class", "sign_between_class"),
          "Sign stiffness: the share of pairs whose loss gradients agree, minus the share that "
          "disagree (pair mode).", zero_line=True),
    Panel("train-val", "cosine stiffness (train-val)", "mean stiffness",
          _pair("", "train_val_within_class", "train_val_between_class"),
          "Stiffness between the probe's training split and its held-out examples: how much a "
          "step on a training example helps an unseen one.", zero_line=True),
    Panel("train-train", "cosine stiffness (train-train)", "mean stiffness",
          _pair("", "train_train_within_class", "train_train_between_class"),
          "Stiffness among the probe's training examples, with the labels the trainer used: "
          "how much a step on one helps another.", zero_line=True),
    Panel("train-val-sign", "sign stiffness (train-val)", "mean stiffness",
          _pair("", "train_val_sign_within_class", "train_val_sign_between_class"),
          "Sign stiffness between the training split and the held-out examples.",
          zero_line=True),
    Panel("probe-loss", "probe loss", "cross-entropy",
          (Series("probe_loss", "held-out probe", PROBE),
           Series("train_probe_loss", "training split", TRAIN, "^", ":")),
          "Cross-entropy on the held-out probe (and on the probe's training split, with the "
          "labels the model was trained on, when the probe has one)."),
    Panel("probe-accuracy", "probe accuracy", "accuracy",
          (Series("probe_accuracy", "held-out probe", PROBE),
           Series("train_probe_accuracy", "training split", TRAIN, "^", ":")),
          "Accuracy on the held-out probe (and on its training split, when it has one)."),
    Panel("loss-gap", "loss gap (training split − held-out)", "cross-entropy difference",
          (Series("train_val_loss_gap", "training split − held-out", TRAIN),),
          "The probe's training-split loss minus its held-out loss; with noisy labels it "
          "shrinks once the model starts to memorise them.", zero_line=True),
    Panel("critical-length", "critical length", "input distance 1 − cos(x1, x2)",
          (Series("critical_length", "critical length", "tab:red"),),
          "The input distance at which within-class stiffness first crosses zero (pair mode); "
          "it shrinks as the model memorises."),
    Panel("gradient-disparity", "gradient disparity (training split)", "|mean g(A) − mean g(B)|",
          (Series("gradient_disparity", "gradient disparity", TRAIN),),
          "Distance between the mean gradients of two fixed halves of the probe's training "
          "split (Forouzesh & Thiran 2021); it grows as the halves stop agreeing."),
    Panel("gsnr", "GSNR (training split)", "mean(g)² / var(g)",
          (Series("gsnr", "mean over parameters", TRAIN),
           Series("gsnr_median", "median over parameters", TRAIN, "^", ":")),
          "Gradient signal-to-noise ratio per parameter over the training split (Liu et al. "
          "2020), summarised over the model."),
    Panel("opposing-share", "opposing share (training split)", "share of examples",
          (Series("opposing_share", "opposing their class", TRAIN),),
          "Share of training examples whose gradient opposes their labelled classmates' "
          "(negative mean cosine): the suspect labels below."),
)  # fmt: skip
#: The panel of each metric; pooled values join their panel only when a rule reads them.
HOME = {metric: panel.key for panel in CATALOGUE for metric in (s.metric for s in panel.series)}
POOLED = {
    "within_class_pooled": ("stiffness", Series("within_class_pooled", "within (pooled)", WITHIN,
                                                "x", "--")),
    "between_class_pooled": ("stiffness", Series("between_class_pooled", "between (pooled)",
                                                 BETWEEN, "x", "--")),
    "sign_within_class_pooled": ("sign", Series("sign_within_class_pooled", "within (pooled)",
                                                WITHIN, "x", "--")),
}  # fmt: skip


def rule_readers(rules: RuleSet) -> dict[str, list[str]]:
    """Each metric the rule set reads, with the top-level rules that read it, in file order;
    the metric that picks the best checkpoint is read by ``BEST_READER``."""
    readers: dict[str, list[str]] = {}

    def walk(rule: Any, top: str) -> None:
        if isinstance(rule, (AllRule, AnyRule)):
            for sub in rule.rules:
                walk(sub, top)
            return
        for metric in getattr(rule, "metrics", None) or [rule.metric]:
            names = readers.setdefault(metric, [])
            if top not in names:
                names.append(top)

    for index, rule in enumerate(rules.rules):
        walk(rule, rule_name(rule, index))
    readers.setdefault(best_spec(rules).metric, []).append(BEST_READER)
    return readers


def rule_thresholds(rules: RuleSet) -> dict[str, list[tuple[float, str]]]:
    """The threshold rules' bounds by metric, to draw as horizontal lines."""
    found: dict[str, list[tuple[float, str]]] = {}

    def walk(rule: Any, name: str) -> None:
        if isinstance(rule, (AllRule, AnyRule)):
            for index, sub in enumerate(rule.rules):
                walk(sub, rule_name(sub, index))
        elif isinstance(rule, ThresholdRule):
            for bound, what in ((rule.stopping_threshold, "stopping"),
                                (rule.divergence_threshold, "divergence")):  # fmt: skip
                if bound is not None:
                    found.setdefault(rule.metric, []).append((bound, f"{name}: {what} threshold"))

    for index, rule in enumerate(rules.rules):
        walk(rule, rule_name(rule, index))
    return found


def values(results: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """The metric at each evaluation as the rules read it; NaN where there is no finite value."""
    out = []
    for result in results:
        value = metric_value(result, metric)
        out.append(value if value is not None and math.isfinite(value) else math.nan)
    return out


def _finite(series: Sequence[float]) -> list[float]:
    return [v for v in series if not math.isnan(v)]


def has_values(results: Sequence[Mapping[str, Any]], metric: str) -> bool:
    """Whether any evaluation has a finite value for ``metric``."""
    return bool(_finite(values(results, metric)))


def _class_panel(metric: str) -> Panel:
    label = CLASS_METRIC.match(metric)
    assert label is not None
    return Panel(
        f"class-within-{label.group(1)}",
        f"within-class stiffness of class {label.group(1)}",
        "mean stiffness",
        (Series(metric, f"class {label.group(1)}", WITHIN),),
        f"The class matrix's diagonal entry for class {label.group(1)}.",
        zero_line=True,
    )


def _shows_something(panel: Panel, results: Sequence[Mapping[str, Any]]) -> Panel | None:
    """The panel with its empty series dropped, or None when nothing is left to show."""
    kept = tuple(s for s in panel.series if _finite(values(results, s.metric)))
    if not kept:
        return None
    if not panel.read_by and len(results) > 1:
        flat = all(len(set(_finite(values(results, s.metric)))) == 1 for s in kept)
        if flat:
            return None
    return replace(panel, series=kept)


def choose_panels(
    rules: RuleSet, results: Sequence[Mapping[str, Any]]
) -> tuple[list[Panel], list[Panel]]:
    """(the panels the rules read, in the order the rules name their metrics; the others, in
    catalogue order), each without the series and panels that have nothing to show."""
    readers, bounds = rule_readers(rules), rule_thresholds(rules)
    panels = {panel.key: panel for panel in CATALOGUE}
    order: list[str] = []
    for metric in readers:
        if CLASS_METRIC.match(metric):
            panel = _class_panel(metric)
            panels[panel.key], key = panel, panel.key
        elif metric in POOLED:
            key, extra = POOLED[metric]
            panels[key] = replace(panels[key], series=(*panels[key].series, extra))
        else:
            key = HOME[metric]
        panel = panels[key]
        names = [*panel.read_by, *(n for n in readers[metric] if n not in panel.read_by)]
        lines = [*panel.thresholds, *bounds.get(metric, [])]
        panels[key] = replace(panel, read_by=tuple(names), thresholds=tuple(lines))
        if key not in order:
            order.append(key)
    read = [p for key in order if (p := _shows_something(panels[key], results)) is not None]
    rest = [
        p
        for key, panel in panels.items()
        if key not in order and (p := _shows_something(panel, results)) is not None
    ]
    return read, rest


def unread_metrics(rules: RuleSet, results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics a rule reads that no evaluation here has a value for: a rule that can
    never fire, worth a line in the summary."""
    return [metric for metric in rule_readers(rules) if not has_values(results, metric)]
