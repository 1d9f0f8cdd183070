"""The queue of complete checkpoints waiting for evaluation, in step order per run.

Watcher threads put candidates in; the daemon's one evaluation thread takes them out. Within a
run the lowest step goes first (a restart finds checkpoints in directory order, not training
order); across runs the run that has waited longest goes first, so one busy run cannot starve
another. With the ``latest`` backlog policy a run that has fallen behind jumps to its newest
checkpoint and the ones passed over are handed back to be recorded as skipped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from monitor.watching import Candidate

BacklogPolicy = Literal["all", "latest"]


def step_order(candidate: Candidate) -> tuple[float, int, str]:
    """Training order: by step, then (for names without a step) by modification time."""
    step = math.inf if candidate.step is None else float(candidate.step)
    return (step, candidate.mtime_ns, str(candidate.path))


@dataclass
class _RunQueue:
    items: dict[str, Candidate] = field(default_factory=dict)  # by fingerprint
    waiting_since: float = math.inf


@dataclass(frozen=True)
class Taken:
    """The candidate to evaluate now, and any the backlog policy passed over."""

    candidate: Candidate
    skipped: tuple[Candidate, ...] = ()


class CheckpointQueue:
    """Thread-safe; ``put`` from any thread, ``take`` from the evaluation thread."""

    def __init__(
        self,
        backlog: BacklogPolicy = "all",
        on_depth: Callable[[str, int], None] | None = None,
    ) -> None:
        self._backlog = backlog
        self._runs: dict[str, _RunQueue] = {}
        self._condition = threading.Condition()
        self._on_depth = on_depth

    def put(self, candidate: Candidate) -> None:
        with self._condition:
            queue = self._runs.setdefault(candidate.run, _RunQueue())
            if not queue.items:
                queue.waiting_since = time.monotonic()
            queue.items[candidate.fingerprint] = candidate
            depth = len(queue.items)
            self._condition.notify()
        self._report(candidate.run, depth)

    def depth(self, run: str | None = None) -> int:
        with self._condition:
            if run is not None:
                return len(self._runs.get(run, _RunQueue()).items)
            return sum(len(q.items) for q in self._runs.values())

    def take(self, timeout: float) -> Taken | None:
        """The next checkpoint to evaluate, or None after ``timeout`` seconds without one."""
        with self._condition:
            if not self._condition.wait_for(self._has_items, timeout=timeout):
                return None
            run, queue = min(
                ((name, q) for name, q in self._runs.items() if q.items),
                key=lambda item: item[1].waiting_since,
            )
            ordered = sorted(queue.items.values(), key=step_order)
            if self._backlog == "latest":
                chosen, skipped = ordered[-1], tuple(ordered[:-1])
            else:
                chosen, skipped = ordered[0], ()
            for candidate in (chosen, *skipped):
                del queue.items[candidate.fingerprint]
            queue.waiting_since = time.monotonic() if queue.items else math.inf
            depth = len(queue.items)
        self._report(run, depth)
        return Taken(chosen, skipped)

    def _has_items(self) -> bool:
        return any(q.items for q in self._runs.values())

    def _report(self, run: str, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(run, depth)
