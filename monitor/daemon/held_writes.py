"""Writes the store has not taken yet, kept in memory in the order they must land.

Everything the loop stores (an evaluation, its decisions, a failed checkpoint, a watcher's
problem, a skipped checkpoint) goes through here as one closure per write. A write that
raises stays at the head, so after a full disk frees up the same writes land in the same
order and nothing is lost or written twice; a write may queue its follow-up (an evaluation
queues its decisions) to run right after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from monitor.store.store import Store

Write = Callable[[Store], None]


class HeldWrites:
    """A FIFO of pending writes; ``flush`` stops at the first that fails (and re-raises)."""

    def __init__(self) -> None:
        self._writes: deque[Write] = deque()
        self._flushing = False

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, write: Write) -> None:
        self._writes.append(write)

    def add_next(self, write: Write) -> None:
        """Run ``write`` right after the write now running (or first, between flushes)."""
        if self._flushing:
            self._writes.insert(1, write)
        else:
            self._writes.appendleft(write)

    def replace_running(self, write: Write) -> None:
        """Hold ``write`` instead of the write now running (which is about to raise)."""
        if self._flushing:
            self._writes[0] = write
        else:
            self._writes.appendleft(write)

    def flush(self, store: Store) -> bool:
        """Run every write in order; True when any ran. A ``StoreError`` leaves the failed
        write (and everything after it) held for the next flush."""
        wrote = False
        while self._writes:
            self._flushing = True
            try:
                self._writes[0](store)
            finally:
                self._flushing = False
            self._writes.popleft()
            wrote = True
        return wrote
