"""A slow, obviously correct stiffness reference for the engine tests.

Everything the engine does cleverly is done here the plain way, sharing no code with it:
a float64 copy of the model, one backward pass per example with ``torch.autograd.grad``,
and explicit Python loops over ordered pairs i ≠ j for the class matrices (cosine and sign),
their within/between summaries (macro and pooled), the train-val and train-train pair sets,
the distance bins and the critical length (Fort et al. 2019, arXiv 1901.09491).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness.inputs import ProbeSet


@dataclass
class RefMatrix:
    """One class matrix the slow way: entries, pair counts and the four summaries."""

    matrix: list[list[float | None]]
    counts: list[list[int]]
    within: float | None
    between: float | None
    within_pooled: float | None
    between_pooled: float | None


@dataclass
class Reference:
    norms: list[float]
    usable: list[bool]
    parameters: int
    probe_loss: float
    probe_accuracy: float
    train_probe_loss: float | None
    train_probe_accuracy: float | None
    cosine: dict[str, RefMatrix]  # "val-val", and "train-val"/"train-train" with splits
    sign: dict[str, RefMatrix]
    distance: dict[str, Any] | None
    statistics: dict[str, Any] | None = None  # the training split's; None without one


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return torch.as_tensor(output.logits)
    return torch.as_tensor(output[0])


def _sequence_loss(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool
) -> tuple[torch.Tensor | None, float]:
    """Hugging Face's loss for one sequence (1, T, V) at labels (1, T), -100 ignored, and its
    token accuracy; None for the loss when no position is labelled (no gradient)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    if not bool(keep.any()):
        return None, 0.0
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    hits = (logits.argmax(dim=-1) == labels)[keep].double().mean()
    return loss, float(hits)


def example_gradients(
    model: nn.Module,
    probe: ProbeSet,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    loss_name: str = "cross_entropy",
) -> tuple[list[torch.Tensor], list[float], list[bool]]:
    """Per-example flattened float64 gradients, losses and correctness, one backward each.

    Sequence losses (``causal_lm``, ``token_cross_entropy``): ``F.cross_entropy`` averaged
    over the labelled tokens of ``probe.token_targets`` (-100 ignored, by its default
    ``ignore_index``), the model called with ``attention_mask=`` when the probe has one; a
    sequence with no labelled token gets a zero gradient and a NaN loss."""
    m = copy.deepcopy(model).double().eval()
    params = [
        p
        for name, p in m.named_parameters()
        if p.requires_grad
        and (not include or any(fnmatchcase(name, g) for g in include))
        and not any(fnmatchcase(name, g) for g in exclude)
    ]
    grads, losses, correct = [], [], []
    for i in range(probe.size):
        x = probe.inputs[i : i + 1]
        x = x.double() if x.is_floating_point() else x
        y = probe.targets[i : i + 1]
        if loss_name != "cross_entropy":
            assert probe.token_targets is not None
            mask = None if probe.attention_mask is None else probe.attention_mask[i : i + 1]
            out = m(x) if mask is None else m(x, attention_mask=mask)
            shift = loss_name == "causal_lm"
            loss, hits = _sequence_loss(_logits(out), probe.token_targets[i : i + 1], shift)
            if loss is None:
                grads.append(torch.zeros(sum(p.numel() for p in params), dtype=torch.float64))
                losses.append(math.nan)
            else:
                parts = torch.autograd.grad(loss, params, allow_unused=True)
                pairs = zip(params, parts, strict=True)
                flat = [torch.zeros_like(p) if g is None else g for p, g in pairs]
                grads.append(torch.cat([g.reshape(-1) for g in flat]).detach())
                losses.append(float(loss.detach()))
            correct.append(hits)  # type: ignore[arg-type]  # a token share
            continue
        logits = _logits(m(x))
        loss = F.cross_entropy(logits, y)
        parts = torch.autograd.grad(loss, params)
        grads.append(torch.cat([p.reshape(-1) for p in parts]).detach())
        losses.append(float(loss.detach()))
        correct.append(int(logits.argmax()) == int(y))
    return grads, losses, correct


def _matrix(values: dict[tuple[int, int], list[float]], size: int) -> RefMatrix:
    cells = [[values.get((a, b), []) for b in range(size)] for a in range(size)]
    diagonal = [cells[a][a] for a in range(size)]
    off = [cells[a][b] for a in range(size) for b in range(size) if a != b]
    within_entries = [m for m in (_mean(c) for c in diagonal) if m is not None]
    between_entries = [m for m in (_mean(c) for c in off) if m is not None]
    return RefMatrix(
        matrix=[[_mean(cells[a][b]) for b in range(size)] for a in range(size)],
        counts=[[len(cells[a][b]) for b in range(size)] for a in range(size)],
        within=_mean(within_entries),
        between=_mean(between_entries),
        within_pooled=_mean([v for c in diagonal for v in c]),
        between_pooled=_mean([v for c in off for v in c]),
    )


def _distance(
    probe: ProbeSet,
    members: list[int],
    cos: dict[tuple[int, int], float],
    cls: list[int],
    bins: int,
) -> dict[str, Any] | None:
    x = [probe.inputs[i].reshape(-1).double() for i in range(probe.size)]
    found: list[tuple[float, float, bool]] = []
    for i in members:
        for j in members:
            if i == j or (i, j) not in cos:
                continue
            ni, nj = float(x[i].norm()), float(x[j].norm())
            if ni == 0 or nj == 0:
                continue
            d = 1.0 - float(torch.dot(x[i], x[j])) / (ni * nj)
            found.append((d, cos[(i, j)], cls[i] == cls[j]))
    if not found:
        return None
    top = max(d for d, _, _ in found) or 1.0
    width = top / bins
    within: list[list[float]] = [[] for _ in range(bins)]
    between: list[list[float]] = [[] for _ in range(bins)]
    for d, value, same in found:
        k = min(max(math.floor(d / width), 0), bins - 1)
        (within if same else between)[k].append(value)
    edges = [k * width for k in range(bins + 1)]
    centres = [(edges[k] + edges[k + 1]) / 2 for k in range(bins)]
    curve = [_mean(v) for v in within]
    critical: float | None = None
    previous: tuple[float, float] | None = None
    for k in range(bins):
        level = curve[k]
        if level is None:
            continue
        if previous is not None and previous[1] > 0 and level <= 0:
            critical = previous[0] + (centres[k] - previous[0]) * previous[1] / (
                previous[1] - level
            )
            break
        previous = (centres[k], level)
    return {
        "edges": edges,
        "within": curve,
        "between": [_mean(v) for v in between],
        "within_pairs": [len(v) for v in within],
        "between_pairs": [len(v) for v in between],
        "critical_length": critical,
    }


def _halves(probe: ProbeSet, train: list[int]) -> dict[int, int]:
    """Half 0 or 1 of each training example: ranked by source index, a permutation seeded
    with 0, the first n // 2 ranks in half 0 (the rule ``monitor.stiffness.statistics``
    documents, written out again here)."""
    ranked = sorted(train, key=lambda i: (probe.source_indices[i], i))
    permutation = torch.randperm(len(ranked), generator=torch.Generator().manual_seed(0))
    return {i: 0 if int(permutation[r]) < len(ranked) // 2 else 1 for r, i in enumerate(ranked)}


def reference_statistics(
    probe: ProbeSet,
    grads: list[torch.Tensor],
    usable: list[bool],
    train: list[int],
    cls: list[int],
) -> dict[str, Any]:
    """Gradient disparity, GSNR and the opposing share over the usable training examples,
    the plain way: explicit means, a two-pass variance, and loops over classmate pairs."""
    members = [i for i in train if usable[i]]
    half = _halves(probe, train)
    groups = [[i for i in members if half[i] == h] for h in (0, 1)]
    disparity = None
    if groups[0] and groups[1]:
        means = [sum(grads[i] for i in g) / len(g) for g in groups]
        disparity = float((means[0] - means[1]).norm())
    gsnr = median = None
    ratios: list[float] = []
    if len(members) >= 2:
        stacked = torch.stack([grads[i] for i in members])  # (n, P)
        mean = stacked.mean(dim=0)
        variance = (stacked - mean).square().mean(dim=0)
        second = stacked.square().mean(dim=0)
        floor = torch.finfo(torch.float64).eps ** 2 * float(second.max())  # rounding residue
        for j in range(stacked.shape[1]):
            if float(variance[j]) > 1e-12 * float(second[j]) and float(second[j]) > floor:
                ratios.append(float(mean[j]) ** 2 / float(variance[j]))
        if ratios:
            gsnr = sum(ratios) / len(ratios)
            median = sorted(ratios)[(len(ratios) - 1) // 2]
    mean_cos: dict[int, float] = {}
    for i in members:
        mates = [j for j in members if j != i and cls[j] == cls[i]]
        if mates:
            cosines = [
                float(torch.dot(grads[i], grads[j]) / (grads[i].norm() * grads[j].norm()))
                for j in mates
            ]
            mean_cos[i] = sum(cosines) / len(cosines)
    opposing = sorted(
        (v, probe.source_indices[i], int(probe.targets[i])) for i, v in mean_cos.items() if v < 0
    )
    return {
        "gradient_disparity": disparity,
        "gsnr": gsnr,
        "gsnr_median": median,
        "gsnr_parameters": len(ratios),
        "opposing_share": len(opposing) / len(mean_cos) if mean_cos else None,
        "examples": len(mean_cos),
        "halves": [len(groups[0]), len(groups[1])],
        "suspect_labels": [{"index": i, "label": y, "cosine": v} for v, i, y in opposing],
    }


def _scored(values: list[Any], members: list[int], losses: list[float] | None = None) -> float:
    """Mean of ``values`` over ``members`` that have a loss (a sequence with no labelled
    token has none: NaN); NaN when none has."""
    kept = [i for i in members if not math.isnan((losses or values)[i])]
    return sum(float(values[i]) for i in kept) / len(kept) if kept else math.nan


def reference_stiffness(
    model: nn.Module,
    probe: ProbeSet,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    min_grad_norm: float = 1e-10,
    bins: int = 20,
    loss: str = "cross_entropy",
) -> Reference:
    grads, losses, correct = example_gradients(model, probe, include, exclude, loss)
    n = probe.size
    norms = [float(g.norm()) for g in grads]
    usable = [math.isfinite(v) and v > min_grad_norm for v in norms]
    classes = list(probe.classes)
    cls = [classes.index(int(t)) for t in probe.targets]
    if probe.has_splits:
        assert probe.is_train is not None
        train = [i for i in range(n) if bool(probe.is_train[i])]
        held = [i for i in range(n) if not bool(probe.is_train[i])]
    else:
        train, held = [], list(range(n))
    sets = {"val-val": (held, held)}
    if train:
        sets.update({"train-val": (train, held), "train-train": (train, train)})
    cosine, sign = {}, {}
    cos_val: dict[tuple[int, int], float] = {}
    for name, (rows, cols) in sets.items():
        cos_cells: dict[tuple[int, int], list[float]] = {}
        sign_cells: dict[tuple[int, int], list[float]] = {}
        for i in rows:
            for j in cols:
                if i == j or not usable[i] or not usable[j]:
                    continue
                dot = float(torch.dot(grads[i], grads[j]))
                cos = dot / (norms[i] * norms[j])
                cos_cells.setdefault((cls[i], cls[j]), []).append(cos)
                sign_cells.setdefault((cls[i], cls[j]), []).append(
                    1.0 if dot > 0 else -1.0 if dot < 0 else 0.0
                )
                if name == "val-val":
                    cos_val[(i, j)] = cos
        cosine[name] = _matrix(cos_cells, len(classes))
        sign[name] = _matrix(sign_cells, len(classes))
    return Reference(
        norms=norms,
        usable=usable,
        parameters=int(grads[0].numel()),
        probe_loss=_scored(losses, held),
        probe_accuracy=_scored(correct, held, losses),
        train_probe_loss=_scored(losses, train) if train else None,
        train_probe_accuracy=_scored(correct, train, losses) if train else None,
        cosine=cosine,
        sign=sign,
        distance=_distance(probe, held, cos_val, cls, bins),
        statistics=reference_statistics(probe, grads, usable, train, cls) if train else None,
    )
