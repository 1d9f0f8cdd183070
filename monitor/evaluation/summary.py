"""A human-readable summary of one evaluation, for ``evaluate`` without ``--json``.

Readers scan for three things: which checkpoint, how stiff within versus between classes, and
whether the numbers rest on enough examples. The full matrix is shown only while it fits a
terminal.
"""

from __future__ import annotations

from monitor.evaluation.evaluator import Evaluation
from monitor.stiffness.result import ClassStiffness

MAX_MATRIX_CLASSES = 12


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _matrix_lines(classes: tuple[int, ...], stiffness: ClassStiffness) -> list[str]:
    width = 7
    header = " " * 6 + "".join(f"{c:>{width}}" for c in classes)
    rows = [
        f"{a:>5} " + "".join(f"{_num(v, 3):>{width}}" for v in row)
        for a, row in zip(classes, stiffness.matrix, strict=True)
    ]
    return [header, *rows]


def _stiffness_line(label: str, stiffness: ClassStiffness, error: float | None = None) -> str:
    spread = "" if error is None else f" ± {error:.4f}"
    return (
        f"{label:<12}within {_num(stiffness.within)}{spread}  between {_num(stiffness.between)}"
        f"  (pooled over pairs: {_num(stiffness.within_pooled)} / "
        f"{_num(stiffness.between_pooled)})"
    )


def format_evaluation(evaluation: Evaluation) -> str:
    result = evaluation.result
    counts = result.counts
    step = "unknown" if evaluation.step is None else f"{evaluation.step} ({evaluation.step_source})"
    accuracy = "n/a" if result.probe_accuracy is None else f"{100 * result.probe_accuracy:.1f}%"
    lines = [
        f"checkpoint  {evaluation.checkpoint}",
        f"format      {evaluation.format}, step {step}",
        f"probe       {counts.examples} examples, {len(result.classes)} classes, "
        f"{counts.train_examples} from the training split, "
        f"{counts.zero_gradient} with a zero gradient",
        f"parameters  {counts.parameters:,} ({result.mode} mode, {result.precision}, "
        f"{result.device})",
        f"probe loss  {_num(result.probe_loss)}   accuracy {accuracy}",
        _stiffness_line("cosine", result.cosine, result.uncertainty.get("within_class")),
    ]
    if result.sign is not None:
        lines.append(
            _stiffness_line("sign", result.sign, result.uncertainty.get("sign_within_class"))
        )
    for name, pair_set in result.pair_sets.items():
        lines.append(_stiffness_line(f"{name}", pair_set.cosine))
    if result.distance is not None:
        lines.append(
            f"critical length (input distance where within-class stiffness "
            f"crosses zero): {_num(result.distance.critical_length)}"
        )
    per_class = "  ".join(
        f"{c}:{_num(v, 3)}" for c, v in zip(result.classes, result.cosine.per_class, strict=True)
    )
    lines.append(f"per class   {per_class}")
    if len(result.classes) <= MAX_MATRIX_CLASSES:
        lines.append("class stiffness matrix (cosine; rows: class of x1, columns: class of x2)")
        lines.extend(_matrix_lines(result.classes, result.cosine))
    if result.uncertainty:
        lines.append("            (± one jackknife standard error over the held-out examples)")
    stats = result.statistics
    if stats is not None:
        lines.append(
            f"training split: gradient disparity {_num(stats.gradient_disparity)}, GSNR "
            f"{_num(stats.gsnr)} (median {_num(stats.gsnr_median)}), opposing share "
            f"{_num(stats.opposing_share)} ({len(stats.suspect_labels)} suspect labels)"
        )
    timing = ", ".join(f"{k} {v:.3f}s" for k, v in result.timings.items())
    lines.append(f"timings     {timing}")
    return "\n".join(lines)
