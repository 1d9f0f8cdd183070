"""The store's tables: the migration steps that create them, in order, forever.

``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``; the version lives
in ``PRAGMA user_version`` (0 for a fresh file). Steps are history: once released, a step is
never edited, only followed by a new one, because databases written by older daemons must
keep migrating to the same schema as fresh ones. ``apply_migrations`` runs every missing step
and the version bump inside the caller's transaction, so a crash mid-migration leaves the
database at its old version, never half way.

The frozen rows read from the tables are in ``monitor.store.rows``.

Version 1 holds what the daemon records per checkpoint (issue "Store"); version 2 adds what the
decision layer records (rule state, decisions, stops); version 3 when each stop's file was
written (issue 19); version 4 attempts, so that a rerun into the same folder starts afresh
(issue 14).
"""

from __future__ import annotations

import sqlite3

# "STFM": stamped in the header by the first step so that a store can tell its own database
# from another application's SQLite file that happens to sit at the configured path.
APPLICATION_ID = 0x5354464D

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: evaluations, errors and skipped checkpoints.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            run TEXT NOT NULL,
            path TEXT NOT NULL,
            step INTEGER,
            step_source TEXT NOT NULL,
            format TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            evaluated_at REAL NOT NULL,
            duration_seconds REAL NOT NULL,
            within_class REAL,
            probe_loss REAL,
            probe_accuracy REAL,
            result_json TEXT NOT NULL,
            UNIQUE (run, fingerprint)
        )
        """,
        "CREATE INDEX evaluations_by_step ON evaluations (run, step)",
        """
        CREATE TABLE errors (
            id INTEGER PRIMARY KEY,
            run TEXT NOT NULL,
            path TEXT NOT NULL,
            fingerprint TEXT,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            at REAL NOT NULL
        )
        """,
        "CREATE INDEX errors_by_reason ON errors (run, reason)",
        """
        CREATE TABLE skipped (
            id INTEGER PRIMARY KEY,
            run TEXT NOT NULL,
            path TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            step INTEGER,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )
        """,
        "CREATE INDEX skipped_by_run ON skipped (run)",
    ),
    # 1 -> 2: the decision layer's rule state, per-evaluation decisions and raised stops.
    (
        """
        CREATE TABLE rule_state (
            run TEXT NOT NULL,
            rule TEXT NOT NULL,
            state_json TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run, rule)
        )
        """,
        """
        CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            run TEXT NOT NULL,
            evaluation_id INTEGER NOT NULL REFERENCES evaluations (id),
            rule TEXT NOT NULL,
            stop INTEGER NOT NULL CHECK (stop IN (0, 1)),
            reason TEXT NOT NULL,
            state_json TEXT NOT NULL,
            at REAL NOT NULL
        )
        """,
        "CREATE INDEX decisions_by_evaluation ON decisions (run, evaluation_id)",
        """
        CREATE TABLE stops (
            run TEXT PRIMARY KEY,
            evaluation_id INTEGER NOT NULL REFERENCES evaluations (id),
            rule TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload_json TEXT NOT NULL,
            at REAL NOT NULL
        )
        """,
    ),
    # 2 -> 3: a stop stays pending (written_at NULL) from its commit until its stop file is
    # written, so a failed write (or a kill between the two) is retried instead of lost. Older
    # daemons wrote the file right after the commit or counted an error and gave up: their
    # stops count as written.
    (
        "ALTER TABLE stops ADD COLUMN written_at REAL",
        "UPDATE stops SET written_at = at",
    ),
    # 3 -> 4: attempts (issue 14). A rerun into the same folder is a new attempt of its run:
    # its own history, rule state and stop. Everything stored before is attempt 1; stops are
    # keyed by (run, attempt), so the table is rebuilt (SQLite cannot change a primary key).
    (
        "ALTER TABLE evaluations ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX evaluations_by_attempt ON evaluations (run, attempt, step)",
        """
        CREATE TABLE attempts (
            run TEXT NOT NULL,
            attempt INTEGER NOT NULL CHECK (attempt >= 2),
            reason TEXT NOT NULL,
            started_at REAL NOT NULL,
            PRIMARY KEY (run, attempt)
        )
        """,
        """
        CREATE TABLE stops_by_attempt (
            run TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            evaluation_id INTEGER NOT NULL REFERENCES evaluations (id),
            rule TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload_json TEXT NOT NULL,
            at REAL NOT NULL,
            written_at REAL,
            PRIMARY KEY (run, attempt)
        )
        """,
        "INSERT INTO stops_by_attempt SELECT run, 1, evaluation_id, rule, reason, payload_json,"
        " at, written_at FROM stops",
        "DROP TABLE stops",
        "ALTER TABLE stops_by_attempt RENAME TO stops",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(connection: sqlite3.Connection) -> int:
    """The version stamped in the database header (0 for a database never migrated)."""
    row = connection.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def foreign_database(connection: sqlite3.Connection, version: int) -> bool:
    """True when this SQLite database belongs to something else and must not be touched:
    a migrated store carries our application id, an unmigrated one holds no tables yet."""
    if version > 0:
        return int(connection.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID
    return connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None


def apply_migrations(
    connection: sqlite3.Connection,
    current: int,
    migrations: tuple[tuple[str, ...], ...] = MIGRATIONS,
) -> int:
    """Run the steps after ``current`` and stamp the new version; return that version.

    The caller holds the write transaction: DDL and ``user_version`` are transactional in
    SQLite, so either every step lands together with its version, or none does.
    """
    for step in migrations[current:]:
        for statement in step:
            connection.execute(statement)
    target = len(migrations)
    if target != current:
        # PRAGMA takes no parameters; the value is our own integer, never user input.
        connection.execute(f"PRAGMA user_version = {int(target)}")
    return target
