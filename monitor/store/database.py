"""The SQLite file under the store: opening it safely, and the transactions every write runs in.

``Database`` owns the file and nothing about what is in its tables: it refuses a file that is
not SQLite before SQLite touches it, creates missing folders private, opens the connection
writable or read-only, sets the pragmas, migrates the schema (``monitor.store.schema``, its
version in ``PRAGMA user_version``) forward on a writable open, refuses a database from a newer
release or another application (never touching it), and turns every ``sqlite3`` error into a
``StoreError`` naming the file. ``monitor.store.store.Store`` builds the records and queries on
top of it.

SQLite in WAL mode gives a sidecar what it needs: one writer (the daemon) and any number of
readers (``report``, ``backtest``, an operator's shell) at the same time, readers never
blocking the writer nor the writer the readers.

Durability: ``synchronous=NORMAL``. In WAL mode a commit has been written to the WAL file (the
kernel's page cache) before ``record_*`` returns, so ``kill -9`` of the daemon loses nothing
committed; what NORMAL gives up against FULL is only an fsync per commit, which matters for
power loss (out of scope; the database still never corrupts, the last few commits may roll
back and those checkpoints are simply evaluated again). Skipping that fsync keeps the sidecar
from stalling behind the trainer's multi-gigabyte checkpoint writes to the same filesystem.
WAL needs shared memory, so the state folder must be on a local filesystem, not NFS.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from monitor.errors import MonitorError
from monitor.store.schema import (
    SCHEMA_VERSION,
    apply_migrations,
    foreign_database,
    schema_version,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_SECONDS = 10.0


class StoreError(MonitorError):
    """The store cannot be opened or used: not SQLite, too new, missing, or unwritable."""


def _check_header(path: Path) -> None:
    """Refuse a non-empty file that is not SQLite before SQLite gets a chance to touch it."""
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise StoreError(
            f"{path}: not an SQLite database (the store path must be the monitor's own "
            "state file); move the file away or set store.path elsewhere"
        )


def make_private_dirs(folder: Path) -> None:
    """Create missing folders with mode 0o700: results and paths are nobody else's business.

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the last folder only.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)


class Database:
    """One connection to the state database, opened for writing (the daemon) or read-only
    (everyone else), with the plumbing every query and write goes through.

    Calls are serialised by a lock, so it may be handed between threads, but it is meant for
    one thread at a time: several threads gain nothing.
    """

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(
        self, path: Path | str, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        try:
            self._db = self._open(timeout)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"{self.path}: cannot open the store: {error}") from error

    def _open(self, timeout: float) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.is_file():
                raise StoreError(f"{self.path}: no store here (the daemon creates it)")
        else:
            make_private_dirs(self.path.parent)
        if self.path.exists():
            _check_header(self.path)
        if self.readonly:
            uri = self.path.absolute().as_uri() + "?mode=ro"
            db = sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        else:
            db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Check the version (first read: it also catches files SQLite cannot read), set the
        pragmas a writer needs, and migrate forward in one transaction."""
        version = schema_version(db)
        self._refuse_newer(version)
        self._refuse_foreign(db, version)
        if self.readonly:
            if version == 0:
                raise StoreError(f"{self.path}: the store is empty (the daemon has not set it up)")
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version}, this release reads version "
                    f"{SCHEMA_VERSION}; start the daemon once to migrate it"
                )
            return
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(db)  # another writer may have migrated meanwhile
            self._refuse_newer(version)
            self._refuse_foreign(db, version)
            apply_migrations(db, version)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this release "
                f"understands (up to version {SCHEMA_VERSION}); upgrade stiffness-monitor"
            )

    def _refuse_foreign(self, db: sqlite3.Connection, version: int) -> None:
        if foreign_database(db, version):
            raise StoreError(
                f"{self.path}: an SQLite database that is not a stiffness-monitor store; "
                "move the file away or set store.path elsewhere"
            )

    @property
    def schema_version(self) -> int:
        return int(self._rows("PRAGMA user_version")[0][0])

    def close(self) -> None:
        """Close the connection (idempotent); the last writer to close folds the WAL back."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing: every sqlite3 error becomes a StoreError naming the file ---------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one query to completion: no cursor left open holds a read snapshot (which
        would keep the writer from folding the WAL back into the database)."""
        with self._lock:
            self._check_open()
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: reading the store failed: {error}") from error

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction: all of them are committed, or none.

        Nested use (every ``record_*`` call inside) becomes a savepoint, so an inner failure
        that the caller catches undoes only that call. ``BEGIN IMMEDIATE`` takes the write
        lock up front, waiting up to the busy timeout instead of failing half way.
        """
        with self._lock:
            self._check_open()
            if self.readonly:
                raise StoreError(f"{self.path}: the store was opened read-only")
            outer = self._depth == 0
            statement = "BEGIN IMMEDIATE" if outer else f"SAVEPOINT s{self._depth}"
            try:
                self._db.execute(statement)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot write to the store: {error}") from error
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._undo(outer)
                raise
            self._depth -= 1
            try:
                self._db.execute("COMMIT" if outer else f"RELEASE s{self._depth}")
            except sqlite3.Error as error:
                self._undo(outer)
                raise StoreError(f"{self.path}: committing to the store failed: {error}") from error

    def _undo(self, outer: bool) -> None:
        """Roll back; a rollback that fails too (a full or failing disk) is the caller's error
        already, and SQLite has rolled the transaction back itself or will on the next BEGIN."""
        try:
            if outer:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            else:
                self._db.execute(f"ROLLBACK TO s{self._depth}")
                self._db.execute(f"RELEASE s{self._depth}")
        except sqlite3.Error:
            pass

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement in its own transaction (or the caller's); rows changed."""
        return self._execute_many(sql, [params])

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self.transaction():
            try:
                return self._db.executemany(sql, rows).rowcount
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: writing to the store failed: {error}") from error

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
