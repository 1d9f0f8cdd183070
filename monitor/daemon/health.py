"""What ``/readyz`` and ``/healthz`` say, computed when they are asked.

A sidecar that reports healthy while it is not is worse than one that crashes: its supervisor
never restarts it and the operator trusts a signal that no longer comes. So readiness is the
conjunction of everything the daemon needs to do its job (start-up finished, every watcher
thread alive, an evaluation loop that keeps turning, a store that commits), and liveness
fails once the daemon has been unable to recover for ``grace`` seconds: a stalled loop or a
dead watcher, which a restart cures. A store that cannot commit (a full disk) makes the daemon
unready but not dead, since a restart would not free the disk and would lose the work it
holds in memory.

The answers are computed from timestamps at the moment of asking, on the server's thread, so
a loop stuck inside an evaluation cannot keep a stale "ready" on display.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Health:
    """Readiness and liveness of the daemon (thread-safe; the server reads, the loop writes)."""

    def __init__(
        self,
        stall_timeout: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_timeout = stall_timeout
        self.grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._last_turn = clock()
        self._dead: dict[str, float] = {}  # what failed (a watcher) -> since when
        self._store_ok = True

    # -- written by the loop ---------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._started = True
            self._last_turn = self._clock()

    def finish(self) -> None:
        with self._lock:
            self._started = False

    def turned(self) -> None:
        """The loop came round (between evaluations, or idle)."""
        with self._lock:
            self._last_turn = self._clock()

    def set_dead(self, part: str, dead: bool) -> None:
        """A part whose failure a restart cures (a watcher thread), dead or alive again."""
        with self._lock:
            if dead:
                self._dead.setdefault(part, self._clock())
            else:
                self._dead.pop(part, None)

    def set_store_ok(self, ok: bool) -> None:
        with self._lock:
            self._store_ok = ok

    # -- read by the server ----------------------------------------------------------------

    def stalled_for(self) -> float:
        """Seconds the loop has gone without turning beyond ``stall_timeout`` (0 if not)."""
        with self._lock:
            return max(0.0, self._clock() - self._last_turn - self.stall_timeout)

    def problems(self) -> list[str]:
        """Why the daemon is not ready, one phrase each (empty when ready)."""
        found = [] if self._started else ["starting or stopping"]
        stalled = self.stalled_for()
        with self._lock:
            if stalled > 0:
                found.append(f"the evaluation loop has not turned for {self.stall_timeout:g}s")
            found.extend(f"{part} is dead" for part in sorted(self._dead))
            if not self._store_ok:
                found.append("the store cannot commit")
        return found

    def is_ready(self) -> bool:
        return not self.problems()

    def is_live(self) -> bool:
        """False once a restart-curable failure has lasted longer than ``grace``."""
        stalled = self.stalled_for()
        with self._lock:
            now = self._clock()
            dead_for = max((now - since for since in self._dead.values()), default=0.0)
        return stalled <= self.grace and dead_for <= self.grace
