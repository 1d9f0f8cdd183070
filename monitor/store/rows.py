"""The frozen rows the store reads back from its tables (``schema`` creates the tables).

``monitor.store.store`` re-exports them; import them from there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # importing the result module imports torch: only when asked for one
    from monitor.stiffness.result import StiffnessResult


@dataclass(frozen=True)
class StoredEvaluation:
    """One evaluated checkpoint. ``result`` is the ``evaluate --json`` object, parsed on first
    use: a report listing hundreds of evaluations should not decode every matrix it skips."""

    id: int
    run: str
    path: str
    step: int | None
    step_source: str
    format: str
    size: int
    mtime_ns: int
    fingerprint: str
    evaluated_at: float
    duration_seconds: float
    within_class: float | None
    probe_loss: float | None
    probe_accuracy: float | None
    result_json: str = field(repr=False)
    attempt: int = 1

    @cached_property
    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.result_json)
        return parsed

    def stiffness_result(self) -> StiffnessResult:
        """The stored result as the engine's typed value."""
        from monitor.stiffness.result import StiffnessResult

        return StiffnessResult.from_dict(self.result)


@dataclass(frozen=True)
class StoredError:
    """A checkpoint (or a watched folder: then ``path`` may be empty) that could not be used."""

    id: int
    run: str
    path: str
    fingerprint: str | None
    reason: str
    message: str
    at: float


@dataclass(frozen=True)
class StoredSkip:
    """A complete checkpoint deliberately not evaluated (``backlog-latest``, ``deleted``)."""

    id: int
    run: str
    path: str
    fingerprint: str
    step: int | None
    reason: str
    at: float


class DecisionLike(Protocol):
    """What ``record_decisions`` needs from a rule's verdict: the rules module's own type fits."""

    @property
    def rule(self) -> str: ...
    @property
    def stop(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def state(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class StoredDecision:
    """A recorded ``Decision`` with the evaluation it was made on."""

    id: int
    run: str
    evaluation_id: int
    rule: str
    stop: bool
    reason: str
    state: dict[str, Any]
    at: float


@dataclass(frozen=True)
class StoredStop:
    """The stop raised for one attempt of a run; at most one per attempt, never replaced.

    ``written_at`` is when its stop file was first written (or an existing one kept); None
    while the stop is pending: committed, but the file not written yet.
    """

    run: str
    evaluation_id: int
    rule: str
    reason: str
    payload: dict[str, Any]
    at: float
    written_at: float | None = None
    attempt: int = 1

    @property
    def pending(self) -> bool:
        return self.written_at is None


@dataclass(frozen=True)
class StoredAttempt:
    """One attempt of a run: attempt 1 began with the run, later ones with a rerun (the step
    went back, an evaluated checkpoint was replaced) or ``stiffness-monitor reset``."""

    run: str
    attempt: int
    reason: str
    started_at: float | None  # None for attempt 1: it began with the run's first checkpoint
