"""One daemon per store: an exclusive lock on a file beside the database.

Two daemons on one store both evaluate each new checkpoint and both write decisions, and their
rule states can drift apart. SQLite's own locking serialises their writes but cannot tell them
apart, so the daemon takes an advisory ``flock`` on ``<store>.lock`` for its whole life and a
second one refuses to start, naming the store and the holder's PID. Readers (``report``,
``backtest``, an operator's shell) never take it, so they keep working beside the daemon.

``flock`` dies with its process, so a daemon killed with ``kill -9`` leaves no stale lock. The
file is opened without following a symlink planted at its name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from monitor.errors import MonitorError
from monitor.store.database import make_private_dirs


class StoreLockedError(MonitorError):
    """Another daemon holds the store (a usage problem: exit 2, not a crash)."""


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


class StoreLock:
    """Held from ``acquire`` (or ``with``) until ``release``; not re-entrant."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        make_private_dirs(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as error:
            raise StoreLockedError(
                f"{self.store}: cannot open its lock file {self.path}: {error.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"{self.store}: cannot lock {self.path}: {error.strerror}"
                ) from None
            who = f"PID {holder}" if holder else "another process"
            raise StoreLockedError(
                f"{self.store}: another daemon ({who}) is using this store; stop it first, or "
                "give this daemon its own store.path (readers such as report and backtest "
                "may share it)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock (the file stays: removing it would race with a daemon that just opened it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The PID the holder wrote, if it is there yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_daemon(store: Path) -> int | None:
    """The PID of the daemon holding ``store``'s lock (0 when it has not written it yet), or
    None when no daemon holds it. Asks with a shared lock taken and dropped at once, never
    creating the file: ``check`` uses it to tell "this config's daemon is running" apart from
    "something else holds the metrics port"."""
    try:
        fd = os.open(lock_path(Path(store)), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder(fd) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
