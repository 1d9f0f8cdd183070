"""Standard errors of the within-class values, by the jackknife over held-out probe examples.

The probe is fixed, so the numbers move between checkpoints for two reasons: the model changed,
or these particular examples happen to say so. The second is sampling noise, and its size is
what a rule needs before it calls a drop real (``min_sigma``). The delete-one jackknife gives it
exactly from one number per example, t_i = Σ_{j in class(i), j ≠ i} s_ij (the sum of example
i's stiffness with its classmates):

    T_a = Σ_{i in a} t_i over ordered pairs,     W_a = T_a / (n_a (n_a - 1))
    leaving i out:  W_a(-i) = (T_a - 2 t_i) / ((n_a - 1)(n_a - 2))

and the macro (mean over classes) and pooled (over pairs) within-class values follow. SE² =
(M-1)/M Σ_i (θ(-i) - mean θ(-·))² over the M usable held-out examples. Pair mode has t_i from
its Gram for free; class mode gets u_i·S_a from a second pass over the probe.
"""

from __future__ import annotations

import math

import torch


def jackknife_within(
    t: torch.Tensor, class_index: torch.Tensor, members: torch.Tensor, classes: int
) -> dict[str, float | None]:
    """Jackknife standard errors of the macro and pooled within-class value.

    ``t`` (N,) float64: each example's summed stiffness with its classmates in the set;
    ``members`` (N,) bool: the usable examples of the set; ``class_index`` (N,) matrix rows.
    Returns ``{"within": se, "within_pooled": se}``, None where fewer than two examples leave
    a defined value.
    """
    t = t.to(torch.float64)
    rows = class_index[members]
    values = t[members]
    m = int(values.numel())
    n = torch.bincount(rows, minlength=classes).to(torch.float64)  # (C,)
    totals = torch.zeros(classes, dtype=torch.float64).index_add_(0, rows, values)  # T_a
    pairs = n * (n - 1)
    defined = n >= 2
    within = torch.where(defined, totals / pairs.clamp(min=1), 0.0)  # W_a
    if m < 2 or not bool(defined.any()):
        return {"within": None, "within_pooled": None}
    # Leaving example i (class a) out.
    n_a, t_a, w_a = n[rows], totals[rows], within[rows]
    still = n_a >= 3  # class a keeps a defined diagonal without i
    w_left = torch.where(still, (t_a - 2 * values) / ((n_a - 1) * (n_a - 2)).clamp(min=1), 0.0)
    sum_defined, count_defined = float(within[defined].sum()), int(defined.sum())
    macro_sum = sum_defined - w_a + torch.where(still, w_left, 0.0)
    macro_count = count_defined - (~still).to(torch.float64)
    valid = macro_count > 0
    macro = torch.where(valid, macro_sum / macro_count.clamp(min=1), 0.0)
    pooled = (totals.sum() - 2 * values) / (pairs.sum() - 2 * (n_a - 1)).clamp(min=1)
    return {
        "within": _spread(macro[valid]),
        "within_pooled": _spread(pooled),
    }


def _spread(leave_one_out: torch.Tensor) -> float | None:
    m = int(leave_one_out.numel())
    if m < 2:
        return None
    centred = leave_one_out - leave_one_out.mean()
    value = math.sqrt(float((m - 1) / m * centred.square().sum()))
    return value if math.isfinite(value) else None


def classmate_sums(
    values: torch.Tensor, class_index: torch.Tensor, members: torch.Tensor
) -> torch.Tensor:
    """t_i from an (N, N) pair matrix with zero diagonal: Σ over classmates in ``members``."""
    same = class_index.unsqueeze(1) == class_index.unsqueeze(0)  # (N, N)
    mask = same & members.unsqueeze(0)
    return (values * mask).sum(dim=1)  # (N,)
