"""Every result the daemon produced, in one SQLite file that survives restarts and crashes.

SQLite in WAL mode gives a sidecar what it needs: one writer (the daemon) and any number of
readers (``report``, ``backtest``, an operator's shell) at the same time, readers never
blocking the writer nor the writer the readers. Each ``record_*`` call is one transaction, so
a crash leaves all of one evaluation or none of it, and ``store.transaction()`` groups several
calls (decisions, rule state, a stop) into one when they must land together.

Durability: ``synchronous=NORMAL``. In WAL mode a commit has been written to the WAL file (the
kernel's page cache) before ``record_*`` returns, so ``kill -9`` of the daemon loses nothing
committed; what NORMAL gives up against FULL is only an fsync per commit, which matters for
power loss (out of scope; the database still never corrupts, the last few commits may roll
back and those checkpoints are simply evaluated again). Skipping that fsync keeps the sidecar
from stalling behind the trainer's multi-gigabyte checkpoint writes to the same filesystem.
WAL needs shared memory, so the state folder must be on a local filesystem, not NFS.

The schema (``monitor.store_schema``) carries a version in ``PRAGMA user_version`` and
migrates forward on a writable open; a database from a newer release, or a file that is not
SQLite, is refused with a ``StoreError`` and never touched.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from monitor.errors import MonitorError
from monitor.store_schema import (
    SCHEMA_VERSION,
    Decision,
    DecisionLike,
    StoredDecision,
    StoredError,
    StoredEvaluation,
    StoredSkip,
    StoredStop,
    apply_migrations,
    foreign_database,
    schema_version,
)

__all__ = [
    "SCHEMA_VERSION",
    "Decision",
    "DecisionLike",
    "Store",
    "StoreError",
    "StoredDecision",
    "StoredError",
    "StoredEvaluation",
    "StoredSkip",
    "StoredStop",
]

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_SECONDS = 10.0


class StoreError(MonitorError):
    """The store cannot be opened or used: not SQLite, too new, missing, or unwritable."""


def _json(value: Mapping[str, Any]) -> str:
    """Strict JSON: a NaN here is a bug upstream and must fail loudly, not be stored."""
    return json.dumps(dict(value), allow_nan=False, separators=(",", ":"))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_header(path: Path) -> None:
    """Refuse a non-empty file that is not SQLite before SQLite gets a chance to touch it."""
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise StoreError(
            f"{path}: not an SQLite database (the store path must be the monitor's own "
            "state file); move the file away or set store.path elsewhere"
        )


def _make_private_dirs(folder: Path) -> None:
    """Create missing folders with mode 0o700: results and paths are nobody else's business.

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the last folder only.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)


class Store:
    """The state database, opened for writing (the daemon) or read-only (everyone else).

    One connection per ``Store``. Calls are serialised by a lock, so a ``Store`` may be handed
    between threads, but it is meant for one thread at a time: several threads gain nothing.
    Open one ``Store`` per process; readers in other processes open their own, read-only.
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
            _make_private_dirs(self.path.parent)
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

    def __enter__(self) -> Store:
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
        if outer:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        else:
            self._db.execute(f"ROLLBACK TO s{self._depth}")
            self._db.execute(f"RELEASE s{self._depth}")

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

    # -- evaluations -----------------------------------------------------------------------

    def is_evaluated(self, run: str, fingerprint: str) -> bool:
        """True when this run already has a result for this checkpoint content."""
        sql = "SELECT 1 FROM evaluations WHERE run = ? AND fingerprint = ?"
        return bool(self._rows(sql, (run, fingerprint)))

    def record_evaluation(
        self,
        run: str,
        *,
        path: str,
        fingerprint: str,
        size: int,
        mtime_ns: int,
        evaluation: Mapping[str, Any],
        duration_seconds: float,
    ) -> int:
        """Store one evaluation and return its id.

        The same (run, fingerprint) again changes nothing and returns the first id, so a
        daemon restarted between evaluating and noting it never ends up with two rows.
        ``evaluation`` is ``Evaluation.to_dict()``; a few fields are copied into columns so
        that queries need not parse JSON.
        """
        step = evaluation.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ValueError(f"evaluation step must be an int or None, got {step!r}")
        cosine = evaluation.get("cosine") or {}
        values = (
            run,
            path,
            step,
            str(evaluation.get("step_source", "")),
            str(evaluation.get("format", "")),
            int(size),
            int(mtime_ns),
            fingerprint,
            time.time(),
            float(duration_seconds),
            _optional_float(cosine.get("within")),
            _optional_float(evaluation.get("probe_loss")),
            _optional_float(evaluation.get("probe_accuracy")),
            _json(evaluation),
        )
        with self.transaction():
            self._execute(
                "INSERT INTO evaluations (run, path, step, step_source, format, size, mtime_ns,"
                " fingerprint, evaluated_at, duration_seconds, within_class, probe_loss,"
                " probe_accuracy, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run, fingerprint) DO NOTHING",
                values,
            )
            sql = "SELECT id FROM evaluations WHERE run = ? AND fingerprint = ?"
            return int(self._rows(sql, (run, fingerprint))[0][0])

    def evaluations(self, run: str | None = None) -> list[StoredEvaluation]:
        """In training order: by step (unknown steps last), then by evaluation time.

        Without ``run``, every run's evaluations, grouped by run name.
        """
        rows = self._rows(
            "SELECT id, run, path, step, step_source, format, size, mtime_ns, fingerprint,"
            " evaluated_at, duration_seconds, within_class, probe_loss, probe_accuracy,"
            " result_json FROM evaluations WHERE ? IS NULL OR run = ?"
            " ORDER BY run, step IS NULL, step, evaluated_at, id",
            (run, run),
        )
        return [StoredEvaluation(*row) for row in rows]

    def runs(self) -> list[str]:
        """Every run the store knows about, whether evaluated, failed or skipped."""
        rows = self._rows(
            "SELECT run FROM evaluations UNION SELECT run FROM errors"
            " UNION SELECT run FROM skipped ORDER BY run"
        )
        return [str(row[0]) for row in rows]

    # -- what was not evaluated ------------------------------------------------------------

    def record_error(
        self, run: str, path: str, reason: str, message: str, fingerprint: str | None = None
    ) -> None:
        """Note a checkpoint (or folder) that could not be evaluated; ``reason`` is a token."""
        self._execute(
            "INSERT INTO errors (run, path, fingerprint, reason, message, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run, path, fingerprint, reason, message, time.time()),
        )

    def errors(self, run: str | None = None) -> list[StoredError]:
        """Recorded errors, oldest first."""
        rows = self._rows(
            "SELECT id, run, path, fingerprint, reason, message, at FROM errors"
            " WHERE ? IS NULL OR run = ? ORDER BY id",
            (run, run),
        )
        return [StoredError(*row) for row in rows]

    def error_counts(self, run: str | None = None) -> dict[str, int]:
        """How many errors per reason token (the metric's ``reason`` label after a restart)."""
        rows = self._rows(
            "SELECT reason, COUNT(*) FROM errors WHERE ? IS NULL OR run = ?"
            " GROUP BY reason ORDER BY reason",
            (run, run),
        )
        return {str(reason): int(count) for reason, count in rows}

    def record_skipped(
        self, run: str, path: str, fingerprint: str, step: int | None, reason: str
    ) -> None:
        """Note a complete checkpoint deliberately not evaluated, and why."""
        self._execute(
            "INSERT INTO skipped (run, path, fingerprint, step, reason, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run, path, fingerprint, step, reason, time.time()),
        )

    def skipped(self, run: str | None = None) -> list[StoredSkip]:
        """Recorded skips, oldest first."""
        rows = self._rows(
            "SELECT id, run, path, fingerprint, step, reason, at FROM skipped"
            " WHERE ? IS NULL OR run = ? ORDER BY id",
            (run, run),
        )
        return [StoredSkip(*row) for row in rows]

    # -- rule state, decisions, stops ------------------------------------------------------

    def save_rule_states(self, run: str, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Upsert each named rule's state (rules not named keep theirs), all at once."""
        now = time.time()
        self._execute_many(
            "INSERT INTO rule_state (run, rule, state_json, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run, rule) DO UPDATE SET state_json = excluded.state_json,"
            " updated_at = excluded.updated_at",
            [(run, rule, _json(state), now) for rule, state in states.items()],
        )

    def rule_states(self, run: str) -> dict[str, dict[str, Any]]:
        """Every saved rule state of a run, by rule name: what a restarted daemon resumes."""
        sql = "SELECT rule, state_json FROM rule_state WHERE run = ? ORDER BY rule"
        return {str(rule): json.loads(state) for rule, state in self._rows(sql, (run,))}

    def record_decisions(
        self, run: str, evaluation_id: int, decisions: Sequence[DecisionLike]
    ) -> None:
        """Append what each rule said about one evaluation (a log: nothing is replaced)."""
        now = time.time()
        self._execute_many(
            "INSERT INTO decisions (run, evaluation_id, rule, stop, reason, state_json, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (run, evaluation_id, d.rule, int(bool(d.stop)), d.reason, _json(d.state), now)
                for d in decisions
            ],
        )

    def decisions(self, run: str, evaluation_id: int | None = None) -> list[StoredDecision]:
        """Recorded decisions of a run (or of one evaluation), in the order they were made."""
        rows = self._rows(
            "SELECT id, run, evaluation_id, rule, stop, reason, state_json, at FROM decisions"
            " WHERE run = ? AND (? IS NULL OR evaluation_id = ?) ORDER BY id",
            (run, evaluation_id, evaluation_id),
        )
        return [
            StoredDecision(id_, run_, evaluation, rule, bool(stop), reason, json.loads(state), at)
            for id_, run_, evaluation, rule, stop, reason, state, at in rows
        ]

    def record_stop(
        self, run: str, evaluation_id: int, rule: str, reason: str, payload: Mapping[str, Any]
    ) -> bool:
        """Raise the run's stop; False, and nothing changed, when it was raised before.

        A stop is raised once per run and never silently retracted or rewritten: the trainer
        may already have acted on the first one.
        """
        added = self._execute(
            "INSERT INTO stops (run, evaluation_id, rule, reason, payload_json, at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run) DO NOTHING",
            (run, evaluation_id, rule, reason, _json(payload), time.time()),
        )
        return added == 1

    def stop_for(self, run: str) -> StoredStop | None:
        """The stop raised for ``run``, or None while it runs on."""
        rows = self._rows(
            "SELECT run, evaluation_id, rule, reason, payload_json, at FROM stops WHERE run = ?",
            (run,),
        )
        if not rows:
            return None
        run_, evaluation_id, rule, reason, payload, at = rows[0]
        return StoredStop(run_, evaluation_id, rule, reason, json.loads(payload), at)
