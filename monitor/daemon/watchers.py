"""The daemon's watchers: one ``RunWatcher`` thread per run, kept alive or the daemon ends.

A watcher thread that dies (a bug, or a crafted file that breaks the standard library in this
process) stops all watching of its run while everything else looks fine. So the loop checks
every watcher at each turn: a dead one makes the daemon unready, is restarted once, and if it
dies again the daemon exits non-zero so that its supervisor (systemd, Kubernetes) restarts
the whole process, which is the cure a second death calls for. An observer that stopped is
the watcher's own business (it restarts it within ``watch.poll_interval``); until then the
daemon reports itself unready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitor.config.schema import MonitorConfig, RunConfig
from monitor.daemon.health import Health
from monitor.watching import RunWatcher
from monitor.watching.problems import OnProblem
from monitor.watching.watcher import OnReady

log = logging.getLogger("monitor.daemon")

MAX_RESTARTS = 1  # per run and process: a second death ends the daemon

WatcherFactory = Callable[[RunConfig], RunWatcher]


class Watchers:
    """Starts, checks and stops the watchers of every run."""

    def __init__(
        self,
        config: MonitorConfig,
        health: Health,
        on_ready: OnReady,
        on_problem: OnProblem,
    ) -> None:
        self._config = config
        self._health = health
        self._on_ready = on_ready
        self._on_problem = on_problem
        self._watchers: dict[str, RunWatcher] = {}
        self._restarts: dict[str, int] = {}

    def _new(self, run: RunConfig) -> RunWatcher:
        return RunWatcher(
            run,
            self._config.watch,
            self._config.checkpoint.step_regex,
            on_ready=self._on_ready,
            on_problem=self._on_problem,
        )

    def start(self) -> None:
        for run in self._config.runs:
            watcher = self._new(run)
            watcher.start()
            self._watchers[run.name] = watcher

    def check(self) -> bool:
        """Restart a watcher that died for the first time; False when one died again."""
        healthy = True
        for run in self._config.runs:
            watcher = self._watchers.get(run.name)
            if watcher is None:
                continue
            part = f"the watcher of run {run.name}"
            if watcher.is_alive():
                self._health.set_dead(part, not watcher.is_watching())
                continue
            self._health.set_dead(part, True)
            restarts = self._restarts.get(run.name, 0)
            if restarts >= MAX_RESTARTS:
                log.critical(
                    "%s died again after a restart; exiting with status 1 so that the "
                    "daemon's supervisor restarts it", part,
                )  # fmt: skip
                healthy = False
                continue
            self._restarts[run.name] = restarts + 1
            log.error("%s died; restarting it (once)", part)
            watcher.stop()
            fresh = self._new(run)
            fresh.start()
            self._watchers[run.name] = fresh
        return healthy

    def stop(self) -> None:
        for watcher in self._watchers.values():
            watcher.stop()
