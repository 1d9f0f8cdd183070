"""A store that cannot commit (a full or failing disk) pauses the daemon; it never ends it.

SQLite reports a full disk as an error on the write that needed the space. Exiting on it
(as the daemon once did) loses the work in memory and, under a supervisor, turns into a
restart loop that cannot free the disk. Instead the loop keeps the work it could not store,
stops taking new work (the queue keeps it), reports itself unready with a metric, and tries
again after a back-off that doubles up to ``MAX_BACKOFF``. One log line when the store fails
and one when it commits again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from monitor.daemon.health import Health
from monitor.exporter.metrics import MonitorMetrics
from monitor.store.database import StoreError

log = logging.getLogger("monitor.daemon")

FIRST_BACKOFF = 1.0  # seconds
MAX_BACKOFF = 60.0


class StoreGuard:
    """Back-off state of the store's writes."""

    def __init__(
        self,
        metrics: MonitorMetrics,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._backoff = FIRST_BACKOFF
        self._retry_at = 0.0
        self._failures = 0
        self.failing = False

    def failed(self, error: StoreError) -> None:
        self._failures += 1
        self._metrics.count_store_failure()
        if not self.failing:
            self.failing = True
            self._metrics.set_store_writable(False)
            self._health.set_store_ok(False)
            log.error("the store cannot commit; holding the work in memory and retrying with "
                      "back-off: %s", error)  # fmt: skip
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def waiting(self) -> float:
        """Seconds until the next try (0: try now)."""
        return max(0.0, self._retry_at - self._clock()) if self.failing else 0.0

    def succeeded(self) -> None:
        if self.failing:
            log.info("the store commits again after %d failed attempt(s)", self._failures)
            self.failing = False
            self._metrics.set_store_writable(True)
            self._health.set_store_ok(True)
        self._backoff = FIRST_BACKOFF
        self._failures = 0
