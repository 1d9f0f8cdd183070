"""Problems a run directory can have, each reported once through ``on_problem``.

The daemon counts these and logs their message (one line each), so a message is a complete
sentence that names the run and the path; the watcher itself logs them only at DEBUG level.
Reasons: ``unreadable`` (a folder or checkpoint that cannot be read: reported once, retried,
and reported again only after it was readable in between) and ``no-match`` (nothing has
matched the run's patterns for a long time: likely a wrong pattern or path, not a crash).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from monitor.watching.candidates import IGNORED_NAMES, matches_any

log = logging.getLogger("monitor.watching")

OnProblem = Callable[[str, Path | None, str, str], None]


class Problems:
    """Reports one run's problems, without repeating one that is still going on."""

    def __init__(
        self,
        run: str,
        root: Path,
        patterns: Collection[str],
        *,
        retry_seconds: float,
        no_match_seconds: float,
        on_problem: OnProblem,
    ) -> None:
        self.run = run
        self.root = root
        self._patterns = list(patterns)
        self._retry = retry_seconds
        self._no_match_seconds = no_match_seconds
        self._on_problem = on_problem
        self.unreadable: set[Path] = set()
        self.matched = False  # set once any checkpoint was seen
        self._watching_since: float | None = None
        self._no_match_reported = False

    def report(self, path: Path | None, reason: str, message: str) -> None:
        log.debug("%s", message)
        try:
            self._on_problem(self.run, path, reason, message)
        except Exception:  # the daemon's bug must not stop the watching
            log.exception("run %s: on_problem failed", self.run)

    def unreadable_path(self, path: Path, error: OSError) -> None:
        if path in self.unreadable:
            return
        self.unreadable.add(path)
        what = "the run directory" if path == self.root else str(path)
        detail = error.strerror or str(error)
        message = f"run {self.run}: cannot read {what} ({detail}); retrying every {self._retry:g}s"
        self.report(path, "unreadable", message)

    def readable(self, paths: Collection[Path]) -> None:
        """These paths were read fine (or are gone): a later failure is news again."""
        for path in self.unreadable.intersection(paths):
            log.info("run %s: %s is readable again", self.run, path)
            self.unreadable.discard(path)

    def watching(self, now: float) -> None:
        """The directory is watched from now on: the no-match clock starts (once)."""
        if self._watching_since is None:
            self._watching_since = now

    def no_match_due(self) -> float | None:
        """When the no-match report falls due, or None when it never will."""
        if self.matched or self._no_match_reported or self._watching_since is None:
            return None
        return self._watching_since + self._no_match_seconds

    def check_no_match(self, now: float) -> None:
        due = self.no_match_due()
        if due is None or now < due:
            return
        self._no_match_reported = True
        try:
            present = sorted(n for n in os.listdir(self.root) if not matches_any(n, IGNORED_NAMES))
        except OSError:
            present = []
        found = f"; it holds e.g. {', '.join(present[:3])}" if present else "; it is empty"
        message = (
            f"run {self.run}: nothing under {self.root} has matched the patterns "
            f"{self._patterns} for {self._no_match_seconds:g}s{found}"
        )
        self.report(self.root, "no-match", message)
