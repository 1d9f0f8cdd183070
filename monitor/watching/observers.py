"""watchdog observers for a run directory: native (inotify) or polling, chosen and started.

Events are only hints here: the handler turns each one into a path for the watcher to look
at, and the watcher's own ``stat`` calls decide what is whole. So an observer that drops
events (inotify's queue overflows, a watch limit is reached below the root) costs latency,
not checkpoints: the watcher's periodic rescan finds what the events missed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from monitor.watching.filesystems import polling_reason

log = logging.getLogger("monitor.watching")

# Reads of a file (ours included, when the daemon loads a checkpoint) change nothing.
IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})

Sink = Callable[[str, bool], None]  # (path, renamed into place)


class _PathSink(FileSystemEventHandler):
    """Hands each changed path to the watcher; a moved event's destination is marked renamed."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_EVENTS:
            return
        if event.is_directory and event.event_type == "modified":
            return  # a folder's listing changed: its entries bring their own events
        self._sink(os.fsdecode(event.src_path), False)
        if event.event_type == "moved" and event.dest_path:
            self._sink(os.fsdecode(event.dest_path), True)


def choose_observer(setting: str, root: Path) -> tuple[str, str | None]:
    """``native`` or ``polling`` for ``watch.observer``, and why polling when ``auto`` chose it."""
    if setting in ("native", "polling"):
        return setting, None
    reason = polling_reason(root)
    return ("polling", reason) if reason else ("native", None)


def is_running(observer: BaseObserver) -> bool:
    """False once the observer or its emitter stopped (the polling emitter stops by itself
    when the watched folder is deleted, the inotify one when its root watch is removed)."""
    return observer.is_alive() and all(emitter.is_alive() for emitter in observer.emitters)


def close(observer: BaseObserver) -> None:
    """Stop an observer and join its threads; also one whose start failed (inotify's reader
    thread runs from construction)."""
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=2)
    except Exception:  # cleanup must not hide why we are cleaning up
        log.debug("could not close an observer cleanly", exc_info=True)


def _start(kind: str, root: Path, sink: Sink, poll_interval: float, run: str) -> BaseObserver:
    observer: BaseObserver = (
        PollingObserver(timeout=poll_interval) if kind == "polling" else Observer()
    )
    observer.name = f"monitor-watch-{run}-{kind}"
    try:
        observer.schedule(_PathSink(sink), str(root), recursive=True)
        observer.start()
    except BaseException:
        close(observer)
        raise
    return observer


def open_observer(
    setting: str, root: Path, sink: Sink, poll_interval: float, run: str
) -> tuple[BaseObserver, str]:
    """A started observer for ``root`` and its kind; native falls back to polling on failure.

    Raises ``OSError`` only when polling cannot start either (the directory vanished or
    became unreadable in the meantime): the watcher then tries again later.
    """
    kind, reason = choose_observer(setting, root)
    if reason is not None:
        log.warning("run %s: polling every %gs because %s", run, poll_interval, reason)
    if kind == "native":
        try:
            return _start("native", root, sink, poll_interval, run), "native"
        except OSError as error:
            if not root.is_dir():
                raise
            log.warning(
                "run %s: cannot watch %s with inotify (%s; see fs.inotify.max_user_watches "
                "and max_user_instances); polling every %gs instead",
                run, root, error.strerror or error, poll_interval,
            )  # fmt: skip
    return _start("polling", root, sink, poll_interval, run), "polling"
