"""RunWatcher: one run directory in, each complete checkpoint out, exactly once.

Two kinds of thread work for a watcher. The observer's threads (watchdog's) only record which
paths changed. One settle thread owns everything else, so the rules live in one place: it
waits for the run directory to exist, starts the observer, scans what is already there,
turns changed paths into candidates, re-examines each waiting candidate every tick with its
own ``stat`` calls until it is whole (see ``readiness``), fingerprints it, and hands it to
``on_ready``. Every ``rescan_interval`` it walks the whole tree again, because inotify drops
events when its queue overflows and a network filesystem may deliver none. Idle, it sleeps
until an event, a rescan or a periodic health check is due.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.api import BaseObserver

from monitor.config.schema import RunConfig, WatchConfig
from monitor.watching.candidates import Candidate, Layout
from monitor.watching.observers import close, is_running, open_observer
from monitor.watching.problems import OnProblem, Problems
from monitor.watching.readiness import Completeness
from monitor.watching.settling import Settler

log = logging.getLogger("monitor.watching")

OnReady = Callable[[Candidate], None]


class RunWatcher:
    """Watches one run's directory; calls ``on_ready`` once per complete checkpoint version.

    Both callbacks run on the watcher's own thread and must return quickly (enqueue, count).
    ``on_problem(run, path, reason, message)`` receives ``unreadable`` (a folder or checkpoint
    that cannot be read; retried) and ``no-match`` (nothing matched the patterns for
    ``no_match_warning_seconds``); the message is a complete sentence for the log, which the
    watcher itself writes only at DEBUG level. ``stop()`` returns once every thread is joined.
    """

    def __init__(
        self,
        run: RunConfig,
        watch: WatchConfig,
        step_regex: str,
        *,
        on_ready: OnReady,
        on_problem: OnProblem,
        no_match_warning_seconds: float = 600.0,
    ) -> None:
        if no_match_warning_seconds <= 0:
            raise ValueError(
                f"no_match_warning_seconds must be positive, got {no_match_warning_seconds!r}"
            )
        self.run = run.name
        self.root = Path(run.path)
        self.observer_kind: str | None = None  # "native" or "polling" once watching
        self._watch = watch
        self._patterns = tuple(run.patterns)
        markers = (*watch.unfinished_markers, *watch.ready_markers)
        self._layout = Layout(self.root, self._patterns, markers, step_regex)
        self._tick = min(0.5, max(0.1, watch.settle_seconds / 2))
        self._problems = Problems(
            self.run, self.root, self._patterns, retry_seconds=watch.poll_interval,
            no_match_seconds=no_match_warning_seconds, on_problem=on_problem,
        )  # fmt: skip
        self._settler = Settler(
            self.run,
            self._layout,
            Completeness(tuple(watch.unfinished_markers), tuple(watch.ready_markers)),
            settle_seconds=watch.settle_seconds,
            tick=self._tick,
            backoff=watch.poll_interval,
            on_unreadable=self._problems.unreadable_path,
        )
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._incoming: dict[str, bool] = {}  # changed path -> renamed into place
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._watched = str(self.root)  # the resolved directory the observer watches
        self._missing_warned = False
        self._next_rescan = 0.0
        self._next_health = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching in the background; returns at once (the directory may not exist)."""
        if self._thread is not None:
            raise RuntimeError(f"run {self.run}: the watcher was already started")
        self._thread = threading.Thread(
            target=self._main, name=f"monitor-watch-{self.run}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and the settle thread and wait for both (at most ``timeout``)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("run %s: the watcher did not stop within %gs", self.run, timeout)

    def is_alive(self) -> bool:
        """True while the watcher's thread runs (before ``start`` and after a crash: False)."""
        return self._thread is not None and self._thread.is_alive()

    def is_watching(self) -> bool:
        """False while an observer it opened has stopped (the thread restarts it soon)."""
        observer = self._observer
        return observer is None or is_running(observer)

    def __enter__(self) -> RunWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not pass silently, nor take the daemon down
            log.exception("run %s: the watcher failed and stopped watching", self.run)
        finally:
            self._close_observer()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._observer is None and not self._open(now):
                self._stopping.wait(self._watch.poll_interval)
                continue
            if now >= self._next_health:
                self._next_health = now + self._watch.poll_interval
                if not self._healthy():
                    continue
            self._take_incoming()
            if now >= self._next_rescan:
                self._next_rescan = now + self._watch.rescan_interval
                self._scan(startup=False)
            self._hand_over(self._settler.take_ready(time.monotonic()))
            self._problems.check_no_match(time.monotonic())
            self._sleep()

    def _sleep(self) -> None:
        now = time.monotonic()
        deadlines = [self._next_rescan, self._next_health]
        for due in (self._settler.next_due(), self._problems.no_match_due()):
            if due is not None:
                deadlines.append(due)
        timeout = max(0.0, min(deadlines) - now)
        if timeout <= self._tick:
            self._stopping.wait(max(timeout, 0.05))  # busy: batch the events of a tick
        else:
            self._wake.wait(timeout)  # idle: the next event wakes us

    # -- the observer -----------------------------------------------------------------------

    def _open(self, now: float) -> bool:
        try:
            with os.scandir(self.root):
                pass
        except (FileNotFoundError, NotADirectoryError):
            if not self._missing_warned:
                self._missing_warned = True
                log.warning(
                    "run %s: %s does not exist yet; checking every %gs until it appears",
                    self.run, self.root, self._watch.poll_interval,
                )  # fmt: skip
            return False
        except OSError as error:
            self._problems.unreadable_path(self.root, error)
            return False
        self._problems.readable([self.root])
        try:
            # inotify watches a symlinked run directory itself, not its target: watch the target
            self._watched = str(self.root.resolve())
            self._observer, self.observer_kind = open_observer(
                self._watch.observer, Path(self._watched), self._mark_changed,
                self._watch.poll_interval, self.run,
            )  # fmt: skip
        except OSError as error:  # vanished or locked since the check above: try again later
            log.debug("run %s: cannot watch %s yet (%s)", self.run, self.root, error)
            return False
        if self._missing_warned:
            log.info("run %s: %s appeared", self.run, self.root)
            self._missing_warned = False
        log.info(
            "run %s: watching %s for %s (%s observer)",
            self.run, self.root, ", ".join(self._patterns), self.observer_kind,
        )  # fmt: skip
        self._problems.watching(now)
        self._next_health = now + self._watch.poll_interval
        self._next_rescan = now + self._watch.rescan_interval
        self._scan(startup=True)
        return True

    def _healthy(self) -> bool:
        """False (observer closed) when the directory vanished or the observer died."""
        running = self._observer is not None and is_running(self._observer)
        if running and self.root.is_dir():
            return True
        if not self.root.is_dir():
            log.warning("run %s: %s disappeared; waiting for it to come back", self.run, self.root)
            self._missing_warned = True
        else:
            log.warning(
                "run %s: the %s observer stopped; restarting it", self.run, self.observer_kind
            )
        self._close_observer()
        return False

    def _close_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            close(observer)

    def _mark_changed(self, path: str, renamed: bool) -> None:
        """Called on watchdog's thread for every event: record the path, nothing more."""
        if path.startswith(self._watched) and self._watched != str(self.root):
            path = str(self.root) + path[len(self._watched) :]  # back under the configured path
        with self._lock:
            self._incoming[path] = self._incoming.get(path, False) or renamed
        self._wake.set()

    # -- from paths to waiting candidates ---------------------------------------------------

    def _take_incoming(self) -> None:
        self._wake.clear()
        with self._lock:
            incoming, self._incoming = self._incoming, {}
        kinds: dict[Path, str | None] = {}
        for raw, renamed in incoming.items():
            path = Path(raw)
            on_error = self._problems.unreadable_path
            for found, is_dir in self._layout.candidates_at(path, on_error, kinds):
                self._problems.matched = True
                self._settler.mark(found, is_dir, renamed=renamed and found == path)

    def _scan(self, startup: bool) -> None:
        """Walk the whole tree; mark what is new or changed since it was handed over."""
        errors: set[Path] = set()

        def on_error(path: Path, error: OSError) -> None:
            errors.add(path)
            self._problems.unreadable_path(path, error)

        found = set()
        for path, is_dir in self._layout.walk(self.root, on_error):
            if self._stopping.is_set():
                return  # a huge tree must not hold up stop()
            found.add(path)
            if self._settler.needs_look(path, is_dir):
                self._settler.mark(path, is_dir, startup=startup)
        self._problems.matched = self._problems.matched or bool(found)
        self._settler.forget_unless(found)
        self._problems.readable(self._problems.unreadable - errors - self._settler.pending.keys())

    def _hand_over(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            log.debug("run %s: %s is complete (step %s)", self.run, candidate.path, candidate.step)
            try:
                self._on_ready(candidate)
            except Exception:
                log.exception("run %s: on_ready failed for %s", self.run, candidate.path)
