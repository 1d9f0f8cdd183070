"""The results as markdown: the headline comparison, a breakdown by factor, every run.

Regrets and savings are printed in percentage points / percent; "early" counts healthy runs
(no label noise) stopped before their best checkpoint, "costly" those that lost more than a
point of test accuracy by it. Runs that collapse are scored apart (``collapsed``): their own
column, and out of every other aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.signal_quality.outcomes import Outcome
from bench.signal_quality.summary import Summary, summarise

DATE = "2026-12-05"
MACHINE = "2-core CPU container"
ORACLE, END = "oracle", "no rule (run to the end)"


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def headline(
    results: Mapping[str, Sequence[Outcome]],
    groups: Mapping[str, set[str]],
    healthy: set[str],
    kinds: Mapping[str, str],
    collapsed: set[str],
) -> list[str]:
    """One row per rule set; per group of runs (selection / held-out seeds), over the runs
    that did not collapse: mean regret against the best checkpoint and against the smoothed
    curve, mean saved, early/costly stops on healthy runs; then the collapsed runs apart."""
    head = ["rule set", "kind"]
    for group in groups:
        head += [f"{group}: mean regret (pp)", f"{group}: smoothed regret (pp)",
                 f"{group}: saved (%)", f"{group}: early / costly"]  # fmt: skip
    head += [f"collapsed runs ({len(collapsed)}, all seeds): mean regret (pp)"]
    lines = [_row(head), _row(["---"] * len(head))]
    for label, outcomes in results.items():
        cells = [f"`{label}`", kinds.get(label, "")]
        for names in groups.values():
            part = summarise([o for o in outcomes if o.scenario in names - collapsed], healthy)
            cells += [
                pct(part.mean_regret),
                pct(part.mean_smoothed_regret),
                pct(part.mean_saved),
                f"{part.early} / {part.costly_early} of {part.healthy}",
            ]
        fallen = [o for o in outcomes if o.scenario in collapsed]
        cells.append(pct(summarise(fallen, healthy).mean_regret) if fallen else "-")
        lines.append(_row(cells))
    return lines


def by_factor(
    results: Mapping[str, Sequence[Outcome]],
    scenarios: Mapping[str, Mapping[str, Any]],
    healthy: set[str],
) -> list[str]:
    """Mean regret / saved per level of each factor, for the given rule sets, over all seeds
    (``scenarios``: the runs to include, collapsed ones left out by the caller)."""
    factors: dict[str, Callable[[Mapping[str, Any]], str]] = {
        "noise": lambda s: str(s["noise_label"]),
        "task": lambda s: str(s["task"]),
        "model": lambda s: str(s["arch"]),
        "optimizer": lambda s: str(s["optimizer"]),
        "learning rate": lambda s: f"{s['lr_level']} lr",
    }
    labels = list(results)
    head = ["factor", "level", "runs", *[f"`{label}` regret / saved" for label in labels]]
    lines = [_row(head), _row(["---"] * len(head))]
    for factor, level_of in factors.items():
        levels = sorted({level_of(s) for s in scenarios.values()})
        for level in levels:
            names = {n for n, s in scenarios.items() if level_of(s) == level}
            cells = [factor, level, str(len(names))]
            for label in labels:
                part: Summary = summarise(
                    [o for o in results[label] if o.scenario in names], healthy
                )
                cells.append(f"{pct(part.mean_regret)} / {pct(part.mean_saved)}")
            lines.append(_row(cells))
    return lines


def per_run(
    results: Mapping[str, Sequence[Outcome]], histories: Sequence[dict[str, Any]]
) -> list[str]:
    """Every run: its best and final test accuracy, and each rule set's stop epoch and regret."""
    labels = [label for label in results if label != ORACLE]
    head = ["run", "epochs", "best: epoch, test acc", "end test acc",
            *[f"`{label}`: epoch (regret pp)" for label in labels]]  # fmt: skip
    lines = [_row(head), _row(["---"] * len(head))]
    by_name = {label: {o.scenario: o for o in results[label]} for label in results}
    for history in histories:
        name = history["scenario"]["name"]
        oracle = by_name[ORACLE][name]
        checkpoints = history["checkpoints"]
        mark = " (collapsed)" if oracle.collapsed else ""
        cells = [name + mark, str(len(checkpoints)),
                 f"{oracle.stop_epoch}, {pct(oracle.best_test)}",
                 pct(float(checkpoints[-1]["test_accuracy"]))]  # fmt: skip
        for label in labels:
            o = by_name[label][name]
            epoch = "end" if o.stop_index is None else str(o.stop_epoch)
            cells.append(f"{epoch} ({pct(o.regret)})")
        lines.append(_row(cells))
    return lines
