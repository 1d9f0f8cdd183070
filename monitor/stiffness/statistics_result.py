"""Gradient statistics of the training split, as a small frozen value with its JSON form.

``GradientStatistics`` is what ``monitor.stiffness.statistics`` measures on the probe's
training split (the examples with the labels the trainer used, noise included): gradient
disparity, GSNR and the share of examples whose gradient opposes their class, with the
*suspect labels* behind that share. It is ``StiffnessResult.statistics``: None (JSON null)
when the probe has no training split or ``stiffness.statistics`` is off, so a rule reading
it then sees "not measured". Undefined values are None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SuspectLabel:
    """One training example whose gradient opposes its labelled class: its position in the
    probe file (``index``), the label the trainer used, and its mean cosine to classmates."""

    index: int
    label: int
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "cosine": self.cosine}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuspectLabel:
        return cls(int(data["index"]), int(data["label"]), float(data["cosine"]))


@dataclass(frozen=True)
class GradientStatistics:
    """Statistics of the per-example gradients over the training split.

    ``gradient_disparity``: |mean g over half A - mean g over half B| (Forouzesh & Thiran
    2021), the halves fixed by source index. ``gsnr``: the mean over parameters of
    mean(g_j)² / var(g_j) (Liu et al. 2020), ``gsnr_median`` the lower median, over the
    ``gsnr_parameters`` parameters whose gradient varies. ``opposing_share``: the share of
    ``examples`` (usable, with a usable classmate) whose mean cosine to their classmates is
    negative; ``suspect_labels`` the most negative of them, most negative first (at most
    ``statistics.SUSPECTS``). ``halves``: usable examples in half A and half B.
    """

    gradient_disparity: float | None
    gsnr: float | None
    gsnr_median: float | None
    gsnr_parameters: int
    opposing_share: float | None
    examples: int
    halves: tuple[int, int]
    suspect_labels: tuple[SuspectLabel, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "gradient_disparity": _clean(self.gradient_disparity),
            "gsnr": _clean(self.gsnr),
            "gsnr_median": _clean(self.gsnr_median),
            "gsnr_parameters": self.gsnr_parameters,
            "opposing_share": _clean(self.opposing_share),
            "examples": self.examples,
            "halves": list(self.halves),
            "suspect_labels": [s.to_dict() for s in self.suspect_labels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GradientStatistics:
        halves = data.get("halves") or [0, 0]
        return cls(
            gradient_disparity=_clean(data.get("gradient_disparity")),
            gsnr=_clean(data.get("gsnr")),
            gsnr_median=_clean(data.get("gsnr_median")),
            gsnr_parameters=int(data.get("gsnr_parameters", 0)),
            opposing_share=_clean(data.get("opposing_share")),
            examples=int(data.get("examples", 0)),
            halves=(int(halves[0]), int(halves[1])),
            suspect_labels=tuple(
                SuspectLabel.from_dict(s) for s in data.get("suspect_labels") or []
            ),
        )
