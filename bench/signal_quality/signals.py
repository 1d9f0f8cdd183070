"""What the training split's signals do around the best checkpoint, described, not ruled on.

Two tables for the report: where each signal turns relative to the best test accuracy (the
lag, in checkpoints, from the best checkpoint to the signal's extreme value), and how well
the opposing share's suspect labels and the per-example gradient norms pick out the
mislabelled examples of the probe's training half (the benchmark knows which they are; a
rule does not).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Literal

from bench.signal_quality.outcomes import best_index
from monitor.rules.readings import metric_value

#: Signals to locate, with the direction in which each is "best" (its turn is its extreme).
TURNS: tuple[tuple[str, Literal["min", "max"]], ...] = (
    ("probe_loss", "min"),
    ("probe_accuracy", "max"),
    ("train_val_loss_gap", "max"),
    ("within_class", "max"),
    ("train_val_within_class", "max"),
    ("train_train_within_class", "max"),
    ("gradient_disparity", "min"),
    ("gsnr", "max"),
    ("train_probe_accuracy", "max"),
)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def extreme(values: Sequence[float | None], mode: Literal["min", "max"]) -> int | None:
    """The first index of the smallest (``min``) or largest (``max``) value, None if none."""
    present = [i for i, v in enumerate(values) if v is not None]
    if not present:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(present, key=lambda i: (sign * float(values[i] or 0.0), i))


def lags(
    histories: Sequence[dict[str, Any]], metric: str, mode: Literal["min", "max"]
) -> list[int]:
    """Per run: the signal's extreme checkpoint minus the best checkpoint (negative: earlier)."""
    out = []
    for history in histories:
        checkpoints = history["checkpoints"]
        best = best_index([float(c["test_accuracy"]) for c in checkpoints])
        turn = extreme([metric_value(c["evaluation"], metric) for c in checkpoints], mode)
        if turn is not None:
            out.append(turn - best)
    return out


def _quartiles(values: Sequence[int]) -> str:
    if len(values) < 2:
        return "-"
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q2:+.0f} [{q1:+.0f}, {q3:+.0f}]"


def turn_table(groups: dict[str, Sequence[dict[str, Any]]]) -> list[str]:
    """Median [quartiles] lag of each signal's extreme behind the best checkpoint, per group,
    and the share of runs whose signal is extreme at the first or the last checkpoint (a
    monotone signal, which has no turn to find)."""
    head = ["signal (its best)"]
    for group, runs in groups.items():
        head += [f"{group} ({len(runs)}): lag, median [quartiles]", f"{group}: monotone"]
    lines = [_row(head), _row(["---"] * len(head))]
    for metric, mode in TURNS:
        cells = [f"`{metric}` ({mode})"]
        for runs in groups.values():
            found = lags(runs, metric, mode)
            ends = 0
            for history in runs:
                values = [metric_value(c["evaluation"], metric) for c in history["checkpoints"]]
                turn = extreme(values, mode)
                ends += turn is not None and turn in (0, len(values) - 1)
            cells += [_quartiles(found), f"{ends} of {len(runs)}"]
        lines.append(_row(cells))
    return lines


def _mean(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3g}" if values else "-"


def suspect_table(histories: Sequence[dict[str, Any]]) -> list[str]:
    """For the noisy runs, at the best checkpoint and at the last: the opposing share, the
    suspect labels found and the share truly mislabelled, and the mean gradient norm of the
    mislabelled training examples over that of the correctly labelled ones."""
    head = ["checkpoint", "runs", "opposing share (mean)", "suspects per run (mean)",
            "suspects truly mislabelled", "norm ratio mislabelled / clean (mean)"]  # fmt: skip
    lines = [_row(head), _row(["---"] * len(head))]
    noisy = [h for h in histories if h["scenario"]["noise"] > 0]
    for label in ("best", "last"):
        shares, found, right, ratios = [], [], [], []
        for history in noisy:
            checkpoints = history["checkpoints"]
            at = best_index([float(c["test_accuracy"]) for c in checkpoints])
            evaluation = checkpoints[at if label == "best" else -1]["evaluation"]
            stats = evaluation.get("statistics") or {}
            if stats.get("opposing_share") is not None:
                shares.append(float(stats["opposing_share"]))
            found.append(float(stats.get("suspects", 0)))
            right.append(float(stats.get("suspects_mislabelled", 0)))
            norms = evaluation.get("gradient_norms") or {}
            if norms.get("train_mislabelled") and norms.get("train_clean"):
                ratios.append(float(norms["train_mislabelled"]) / float(norms["train_clean"]))
        truly = f"{sum(right) / sum(found):.0%}" if sum(found) else "no suspects"
        lines.append(_row([label, str(len(noisy)), _mean(shares), _mean(found), truly,
                           _mean(ratios)]))  # fmt: skip
    return lines
