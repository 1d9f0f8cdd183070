"""Stiffness against input distance, and the dynamical critical length.

Fort et al. 2019 (arXiv 1901.09491, §4 and the later version) bin pairs of examples by the
input-space distance d = 1 - cos(x1, x2) and average cosine stiffness per bin, separately
for pairs of the same class and of different classes. The distance at which the
within-class curve crosses zero, the dynamical critical length, shrinks as the learning
rate grows: the gradient of one example stops helping examples further away than that.

Pairs are ordered (i, j) with i ≠ j, like the pair counts of the class matrices. Examples
whose input is all zeros have no input direction and are left out of the profile.
"""

from __future__ import annotations

import torch

from monitor.stiffness.result import DistanceProfile


def input_distances(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d_ij = 1 - cos(flatten(x_i), flatten(x_j)) in float64: (N, ...) -> (N, N), and (N,)
    True where the input has a direction (non-zero norm)."""
    x = inputs.detach().reshape(inputs.shape[0], -1).to(device="cpu", dtype=torch.float64)
    norms = torch.linalg.vector_norm(x, dim=1)  # (N,)
    has_direction = norms > 0
    unit = x / torch.where(has_direction, norms, 1.0).unsqueeze(1)  # (N, D)
    return 1.0 - unit @ unit.T, has_direction  # (N, D) @ (D, N) -> (N, N)


def critical_length(
    centres: list[float], curve: list[float | None], pairs: list[int]
) -> float | None:
    """First crossing of ``curve`` from > 0 to <= 0 over bins with pairs, interpolated
    linearly between bin centres; None when it never crosses."""
    previous: tuple[float, float] | None = None
    for centre, value, count in zip(centres, curve, pairs, strict=True):
        if count == 0 or value is None:
            continue
        if previous is not None and previous[1] > 0 >= value:
            x0, y0 = previous
            return x0 + (centre - x0) * y0 / (y0 - value)
        previous = (centre, value)
    return None


def distance_profile(
    inputs: torch.Tensor,
    cosine: torch.Tensor,
    pairs: torch.Tensor,
    class_index: torch.Tensor,
    bins: int,
) -> DistanceProfile | None:
    """Mean cosine stiffness per distance bin over the (N, N) bool ``pairs``.

    ``bins`` equal-width bins span [0, largest observed distance] (up to [0, 1] when every
    distance is 0). None when no pair qualifies.
    """
    distance, has_direction = input_distances(inputs)
    pairs = pairs & has_direction.unsqueeze(1) & has_direction.unsqueeze(0)
    if not bool(pairs.any()):
        return None
    d = distance[pairs]  # (K,) over qualifying ordered pairs
    values = cosine[pairs]  # (K,)
    same = (class_index.unsqueeze(1) == class_index.unsqueeze(0))[pairs]  # (K,)
    top = float(d.max())
    top = top if top > 0 else 1.0
    width = top / bins
    which = torch.clamp(torch.floor(d / width), 0, bins - 1).long()  # (K,) bin per pair

    def curve(mask: torch.Tensor) -> tuple[list[float | None], list[int]]:
        counts = torch.bincount(which[mask], minlength=bins)
        sums = torch.bincount(which[mask], weights=values[mask], minlength=bins)
        means = [s / n if n else None for s, n in zip(sums.tolist(), counts.tolist(), strict=True)]
        return means, [int(n) for n in counts.tolist()]

    within, within_pairs = curve(same)
    between, between_pairs = curve(~same)
    edges = [k * width for k in range(bins)] + [top]
    centres = [(edges[k] + edges[k + 1]) / 2 for k in range(bins)]
    return DistanceProfile(
        edges=tuple(edges),
        within=tuple(within),
        between=tuple(between),
        within_pairs=tuple(within_pairs),
        between_pairs=tuple(between_pairs),
        critical_length=critical_length(centres, within, within_pairs),
    )
