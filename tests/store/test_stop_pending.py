"""A stop is pending from its commit until its stop file is written (issue 19, item 3)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from monitor.store.schema import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from monitor.store.store import Store


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


def evaluate(store: Store, run: str = "a") -> int:
    return store.record_evaluation(
        run, path="/ckpt/step_1.pt", fingerprint="f1", size=1, mtime_ns=1,
        evaluation={"step": 1}, duration_seconds=0.1,
    )  # fmt: skip


def test_a_stop_is_pending_until_marked_written_once(database: Path) -> None:
    with Store(database) as store:
        assert not store.mark_stop_written("a")  # no stop: nothing to mark
        assert store.record_stop("a", evaluate(store), "decline", "fell", {"step": 1})
        raised = store.stop_for("a")
        assert raised is not None and raised.pending and raised.written_at is None
        assert store.mark_stop_written("a")
        assert not store.mark_stop_written("a")  # only the first write counts
        written = store.stop_for("a")
        assert written is not None and not written.pending
        assert written.written_at is not None and written.written_at >= written.at
    with Store(database, readonly=True) as reader:  # what report and a restart read
        assert reader.stop_for("a") == written


def test_stops_recorded_by_an_older_daemon_count_as_written(database: Path) -> None:
    """Version 2 wrote the file right after the commit (or counted an error and gave up)."""
    database.parent.mkdir(parents=True)
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("BEGIN")
    apply_migrations(connection, 0, MIGRATIONS[:2])
    connection.execute(
        "INSERT INTO evaluations (id, run, path, step, step_source, format, size, mtime_ns,"
        " fingerprint, evaluated_at, duration_seconds, result_json)"
        " VALUES (3, 'old', '/c/step_9.pt', 9, 'name', 'torch', 1, 1, 'f', 1.0, 0.1, '{}')"
    )
    connection.execute(
        "INSERT INTO stops (run, evaluation_id, rule, reason, payload_json, at)"
        " VALUES ('old', 3, 'decline', 'fell', '{\"step\": 9}', 1234.5)"
    )
    connection.execute("COMMIT")
    connection.close()
    with Store(database) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.stop_for("old")
        assert old is not None and not old.pending and old.written_at == 1234.5
        assert not store.mark_stop_written("old")
        assert store.record_stop("new", evaluate(store, "new"), "decline", "fell", {})
        new = store.stop_for("new")
        assert new is not None and new.pending
