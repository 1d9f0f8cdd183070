"""Bad input counted once: a checkpoint that fails is logged, stored and counted one time.

Two ways the same failure used to be counted again and again:

- a restart re-read every checkpoint that had failed before (its fingerprint is not an
  evaluation), logging and counting it anew each time. The store keeps every failure with its
  fingerprint, so a checkpoint whose *bytes* are bad (``corrupt``) is skipped without reading,
  and one that failed for a reason a config change can cure (``mismatch``, ``pickle``,
  ``format``...) is read again but, failing the same way, not recorded again;
- a writer that pauses longer than ``settle_seconds`` mid-file handed over a half-written
  file, which failed as ``corrupt`` at every pause. A file is now counted ``corrupt`` only
  when it failed and then stayed unchanged for ``confirm_seconds``; one that changed was not
  settled yet, and the watcher hands its next version over as for any rewrite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.store.store import Store
from monitor.watching import Candidate
from monitor.watching.fingerprints import fingerprint, observe

log = logging.getLogger("monitor.daemon")

IN_THE_BYTES = frozenset({"corrupt"})  # no config change can make these load
TO_CONFIRM = frozenset({"corrupt"})  # what a half-written file fails with


@dataclass(frozen=True)
class Failure:
    """A checkpoint that could not be evaluated, and why."""

    candidate: Candidate
    reason: str
    message: str


def current_fingerprint(candidate: Candidate) -> str | None:
    """The checkpoint's fingerprint now; None when it is gone or cannot be read."""
    try:
        observation = observe(candidate.path, candidate.is_dir)
        if observation is None:
            return None
        return fingerprint(candidate.path, candidate.is_dir, observation)
    except OSError:
        return None


class BadInput:
    """Remembers failed fingerprints and holds back the failures that need confirming."""

    def __init__(
        self,
        store: Store,
        confirm_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.confirm_seconds = confirm_seconds
        self._clock = clock
        self._failed = {(e.run, e.fingerprint, e.reason) for e in store.errors() if e.fingerprint}
        self._waiting: dict[tuple[str, str], tuple[Failure, float]] = {}  # (run, path)

    def known_fingerprints(self) -> set[tuple[str, str]]:
        """(run, fingerprint) of every checkpoint that failed before."""
        return {(run, fp) for run, fp, _ in self._failed}

    def skip(self, candidate: Candidate) -> bool:
        """True for a checkpoint whose bytes failed before: not worth reading again."""
        key = (candidate.run, candidate.fingerprint)
        if any((*key, reason) in self._failed for reason in IN_THE_BYTES):
            log.debug("skipped %s: it failed before and has not changed", candidate.path)
            return True
        return False

    def judge(self, failure: Failure) -> Failure | None:
        """The failure to record now, or None (recorded before, or held back to confirm)."""
        candidate = failure.candidate
        if (candidate.run, candidate.fingerprint, failure.reason) in self._failed:
            log.debug("%s failed again as before (%s): not counted again", candidate.path,
                      failure.reason)  # fmt: skip
            return None
        if failure.reason not in TO_CONFIRM:
            return failure
        if current_fingerprint(candidate) != candidate.fingerprint:
            log.debug("%s changed while it was read: not settled yet", candidate.path)
            return None
        due = self._clock() + self.confirm_seconds
        self._waiting[(candidate.run, str(candidate.path))] = (failure, due)
        return None

    def confirmed(self) -> list[Failure]:
        """Held-back failures whose checkpoint stayed unchanged: to record now."""
        now = self._clock()
        ready = []
        for key, (failure, due) in list(self._waiting.items()):
            if now < due:
                continue
            del self._waiting[key]
            if current_fingerprint(failure.candidate) == failure.candidate.fingerprint:
                ready.append(failure)
            else:
                log.debug("%s changed after failing: not settled then, not counted",
                          failure.candidate.path)  # fmt: skip
        return ready

    def recorded(self, failure: Failure) -> None:
        candidate = failure.candidate
        self._failed.add((candidate.run, candidate.fingerprint, failure.reason))

    def forget(self, candidate: Candidate) -> None:
        """A version of this path was evaluated: an older one's doubt no longer matters."""
        self._waiting.pop((candidate.run, str(candidate.path)), None)
