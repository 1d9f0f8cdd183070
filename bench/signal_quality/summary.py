"""Aggregate outcomes over runs and choose the default rule set by a rule stated up front.

The choice (decided before looking at the numbers, see ``choose``): among the candidate rule
sets, on the selection seeds only, drop every set with a *costly* early stop on a healthy run
(stopped before the best checkpoint and lost more than 1 point of test accuracy); of the rest,
take the lowest mean regret; sets within ``TIE`` of that are tied, and the tie goes to the one
that saves the most training. The held-out seeds then show whether the choice carries over.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.signal_quality.outcomes import Outcome

#: Mean regrets (accuracy, 0..1) closer than this are a tie (a quarter of a point).
TIE = 0.0025


@dataclass(frozen=True)
class Summary:
    """One rule set over a group of runs; regrets and savings are shares (0..1)."""

    runs: int
    stopped: int
    mean_regret: float
    median_regret: float
    max_regret: float
    mean_saved: float
    healthy: int
    early: int
    costly_early: int


def summarise(outcomes: Sequence[Outcome], healthy: Iterable[str]) -> Summary:
    """``healthy``: the names of the runs without label noise (for the early-stop counts)."""
    if not outcomes:
        raise ValueError("expected at least one outcome to summarise")
    clean = set(healthy)
    regrets = [o.regret for o in outcomes]
    return Summary(
        runs=len(outcomes),
        stopped=sum(o.stop_index is not None for o in outcomes),
        mean_regret=statistics.fmean(regrets),
        median_regret=statistics.median(regrets),
        max_regret=max(regrets),
        mean_saved=statistics.fmean(o.saved for o in outcomes),
        healthy=sum(o.scenario in clean for o in outcomes),
        early=sum(o.early for o in outcomes),
        costly_early=sum(o.costly_early for o in outcomes),
    )


def choose(summaries: Mapping[str, Summary]) -> str:
    """The best rule set by the criterion in the module docstring (selection seeds only).

    When every set has a costly early stop, the fewest costly early stops come first.
    """
    if not summaries:
        raise ValueError("expected at least one candidate rule set")
    fewest = min(s.costly_early for s in summaries.values())
    eligible = {name: s for name, s in summaries.items() if s.costly_early == fewest}
    lowest = min(s.mean_regret for s in eligible.values())
    tied = [name for name, s in eligible.items() if s.mean_regret <= lowest + TIE]
    return max(tied, key=lambda name: (eligible[name].mean_saved, -eligible[name].mean_regret))
