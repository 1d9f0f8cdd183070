"""The settle clock: candidates wait here until they are whole, then leave once per version.

``Settler`` holds no thread and no observer: the watcher's one settle thread marks paths that
may have changed and asks for the ones that are due. A waiting candidate is re-observed
(``stat`` only) every tick; once its state has stayed unchanged for ``settle_seconds`` (or it
was trusted: renamed into place, or already old when the watcher started) and no marker says
otherwise (``readiness``), it is fingerprinted and handed over. A fingerprint leaves at most
once per watcher; a rewritten checkpoint has a new one and leaves again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monitor.watching.candidates import Candidate, Layout, emission_order
from monitor.watching.fingerprints import Observation, fingerprint, observe
from monitor.watching.readiness import Completeness

log = logging.getLogger("monitor.watching")

LONG_WAIT = 60.0  # seconds a checkpoint may look finished but lack a marker before we say so
OnUnreadable = Callable[[Path, OSError], None]


@dataclass
class Settling:
    """One checkpoint on its way to being whole.

    ``trusted`` means no waiting is needed (renamed into place). ``trust_if_old`` grants the
    same at the first observation when the modification time is already ``settle_seconds``
    old (checkpoints found at start-up). Any change after the first observation withdraws
    the trust and restarts the clock.
    """

    is_dir: bool
    trust_if_old: bool = False
    trusted: bool = False
    state: str | None = None
    since: float = 0.0
    next_check: float = 0.0
    reported: str | None = None  # the last "not whole yet" message logged, to log it once

    def update(self, state: str, now: float) -> None:
        if self.state is None:
            self.state, self.since = state, now
        elif state != self.state:
            self.state, self.since, self.trusted = state, now, False
            self.reported = None

    def trust(self) -> None:
        """Renamed into place just now: whatever is observed next is final."""
        self.trusted, self.state = True, None


class Settler:
    """The waiting candidates of one run, and what was already handed over."""

    def __init__(
        self,
        run: str,
        layout: Layout,
        completeness: Completeness,
        *,
        settle_seconds: float,
        tick: float,
        backoff: float,
        on_unreadable: OnUnreadable,
    ) -> None:
        self.run = run
        self._layout = layout
        self._complete = completeness
        self._settle = settle_seconds
        self._tick = tick
        self._backoff = backoff
        self._on_unreadable = on_unreadable
        self.pending: dict[Path, Settling] = {}
        self._emitted: dict[Path, str] = {}  # path -> its state when handed over
        self._fingerprints: set[str] = set()

    def mark(
        self, path: Path, is_dir: bool, *, renamed: bool = False, startup: bool = False
    ) -> None:
        """``path`` may have changed: examine it at the next tick."""
        entry = self.pending.get(path)
        if entry is None or entry.is_dir != is_dir:
            entry = self.pending[path] = Settling(is_dir, trust_if_old=startup)
        if renamed:
            entry.trust()
        entry.next_check = 0.0

    def needs_look(self, path: Path, is_dir: bool) -> bool:
        """False when ``path`` waits already, or left and is unchanged since (for rescans)."""
        if path in self.pending:
            return False
        state = self._emitted.get(path)
        if state is None:
            return True
        try:
            observation = observe(path, is_dir)
        except OSError:
            return True
        return observation is None or observation.state != state

    def forget_unless(self, present: set[Path]) -> None:
        """After a full scan: forget what left and is gone (rotated away), to stay small."""
        for path in [path for path in self._emitted if path not in present]:
            del self._emitted[path]

    def next_due(self) -> float | None:
        return min((entry.next_check for entry in self.pending.values()), default=None)

    def take_ready(self, now: float) -> list[Candidate]:
        """Examine every candidate that is due; the whole ones, in training order."""
        ready = []
        for path, entry in list(self.pending.items()):
            if entry.next_check <= now:
                candidate = self._examine(path, entry, now)
                if candidate is not None:
                    ready.append(candidate)
        return sorted(ready, key=emission_order)

    def _examine(self, path: Path, entry: Settling, now: float) -> Candidate | None:
        entry.next_check = now + self._tick
        try:
            observation = observe(path, entry.is_dir)
        except OSError as error:
            self._unreadable(path, entry, now, error)
            return None
        if observation is None:
            log.debug("run %s: %s vanished before it was complete; dropped", self.run, path)
            del self.pending[path]
            self._emitted.pop(path, None)
            return None
        if self._emitted.get(path) == observation.state:
            del self.pending[path]  # an event about a checkpoint that left already, unchanged
            return None
        if entry.state is None and entry.trust_if_old:
            entry.trusted = time.time_ns() - observation.mtime_ns >= self._settle * 1e9
        entry.update(observation.state, now)
        if not (entry.trusted or now - entry.since >= self._settle):
            return None
        missing = self._complete.missing(path, entry.is_dir, observation)
        if missing is not None:
            self._not_yet(path, entry, now, missing)
            return None
        try:
            digest = fingerprint(path, entry.is_dir, observation)
            again = observe(path, entry.is_dir)
        except FileNotFoundError:
            return None  # the next tick sees it gone, or changed
        except OSError as error:
            self._unreadable(path, entry, now, error)
            return None
        if again is None or again.state != observation.state:
            return None  # changed while we read it: the next tick restarts the clock
        del self.pending[path]
        self._emitted[path] = observation.state
        if digest in self._fingerprints:
            log.debug("run %s: %s left already (same content)", self.run, path)
            return None
        self._fingerprints.add(digest)
        return self._candidate(path, entry.is_dir, observation, digest)

    def _candidate(self, path: Path, is_dir: bool, seen: Observation, digest: str) -> Candidate:
        step = self._layout.step_of(path)
        return Candidate(self.run, path, is_dir, step, seen.size, seen.mtime_ns, digest)

    def _not_yet(self, path: Path, entry: Settling, now: float, missing: str) -> None:
        """Unchanged but unfinished: say so once, louder after a while, and look less often."""
        waited = now - entry.since
        if entry.reported is None:
            log.debug("run %s: %s is not complete yet: %s", self.run, path, missing)
            entry.reported = missing
        if waited >= max(LONG_WAIT, 10 * self._settle):
            if entry.reported != "long":
                log.info(
                    "run %s: %s has not changed for %.0fs but is not complete: %s",
                    self.run, path, waited, missing,
                )  # fmt: skip
                entry.reported = "long"
            entry.next_check = now + self._backoff

    def _unreadable(self, path: Path, entry: Settling, now: float, error: OSError) -> None:
        self._on_unreadable(path, error)
        entry.next_check = now + self._backoff
