"""The store against real SQLite files: round trips, restarts, a reader in another process
while the daemon writes, ``kill -9`` mid-stream, and every way the file at the path can be
wrong (not SQLite, someone else's database, too new, missing, not yet migrated)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import monitor.store.database
import monitor.store.schema
from monitor.errors import MonitorError
from monitor.rules.engine import Decision
from monitor.stiffness.result import ClassStiffness, Counts, StiffnessResult
from monitor.store.schema import APPLICATION_ID, SCHEMA_VERSION
from monitor.store.store import Store, StoreError
from tests.store.store_writer import evaluation

WRITER = Path(__file__).with_name("store_writer.py")

# Version 1 as the first release wrote it: frozen here, because migrating databases that
# already exist is the point, whatever later edits do to the code.
VERSION_1 = f"""
PRAGMA application_id = {APPLICATION_ID};
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY, run TEXT NOT NULL, path TEXT NOT NULL, step INTEGER,
    step_source TEXT NOT NULL, format TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, fingerprint TEXT NOT NULL, evaluated_at REAL NOT NULL,
    duration_seconds REAL NOT NULL, within_class REAL, probe_loss REAL, probe_accuracy REAL,
    result_json TEXT NOT NULL, UNIQUE (run, fingerprint));
CREATE INDEX evaluations_by_step ON evaluations (run, step);
CREATE TABLE errors (id INTEGER PRIMARY KEY, run TEXT NOT NULL, path TEXT NOT NULL,
    fingerprint TEXT, reason TEXT NOT NULL, message TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX errors_by_reason ON errors (run, reason);
CREATE TABLE skipped (id INTEGER PRIMARY KEY, run TEXT NOT NULL, path TEXT NOT NULL,
    fingerprint TEXT NOT NULL, step INTEGER, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX skipped_by_run ON skipped (run);
INSERT INTO evaluations VALUES (7, 'old', '/ckpt/a.pt', 100, 'filename', 'state_dict', 1, 2,
    'fp-old', 1.0, 0.5, 0.25, 0.3, 0.8, '{{"step": 100}}');
PRAGMA user_version = 1;
"""


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


def says(database: Path, message: str = "") -> str:
    """The start of a store error, as a pattern: the path, then what went wrong. A word alone
    could match the path, whose folder pytest names after the test."""
    return f"^{re.escape(f'{database}: {message}')}"


def record(store: Store, step: int | None, fingerprint: str, run: str = "a", **kw: Any) -> int:
    return store.record_evaluation(
        run,
        path=f"/ckpt/{fingerprint}.pt",
        fingerprint=fingerprint,
        size=10,
        mtime_ns=20,
        evaluation=evaluation(step, **kw),
        duration_seconds=1.5,
    )


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a store holds, for comparing two views of the same file."""
    return {
        "evaluations": [(e.id, e.step, e.fingerprint, e.result) for e in store.evaluations()],
        "errors": store.errors(),
        "skipped": store.skipped(),
        "runs": store.runs(),
        "states": store.rule_states("a"),
        "decisions": store.decisions("a"),
        "stop": store.stop_for("a"),
    }


def fill(store: Store) -> int:
    first = record(store, 200, "fp-200", within=0.4)
    record(store, 100, "fp-100", within=0.6)
    store.record_error("a", "/ckpt/bad.pt", "corrupt", "truncated zip", fingerprint="fp-bad")
    store.record_error("b", "/runs/b", "unreadable", "permission denied")
    store.record_skipped("a", "/ckpt/s.pt", "fp-s", 150, "backlog-latest")
    store.save_rule_states("a", {"decline": {"best": 0.6, "wait": 1}})
    store.record_decisions("a", first, [Decision("decline", True, "fell", {"wait": 2})])
    store.record_stop("a", first, "decline", "fell by 0.2", {"value": 0.4, "best": 0.6})
    return first


def test_every_table_round_trips(database: Path) -> None:
    with Store(database) as store:
        first = fill(store)
        (one_hundred, two_hundred) = store.evaluations("a")
        assert (one_hundred.step, two_hundred.id) == (100, first)
        assert two_hundred.path == "/ckpt/fp-200.pt" and two_hundred.fingerprint == "fp-200"
        assert (two_hundred.size, two_hundred.mtime_ns, two_hundred.duration_seconds) == (
            10,
            20,
            1.5,
        )
        assert (two_hundred.step_source, two_hundred.format) == ("filename", "state_dict")
        assert (two_hundred.within_class, two_hundred.probe_loss) == (0.4, 0.25)
        assert two_hundred.probe_accuracy == 0.9
        assert two_hundred.result == evaluation(200, within=0.4)
        assert abs(two_hundred.evaluated_at - time.time()) < 60
        assert store.is_evaluated("a", "fp-200") and not store.is_evaluated("b", "fp-200")

        (error, folder_error) = store.errors()
        assert (error.run, error.path, error.fingerprint) == ("a", "/ckpt/bad.pt", "fp-bad")
        assert (error.reason, error.message) == ("corrupt", "truncated zip")
        assert folder_error.fingerprint is None
        assert store.error_counts() == {"corrupt": 1, "unreadable": 1}
        assert store.error_counts("b") == {"unreadable": 1}
        (skip,) = store.skipped("a")
        assert (skip.fingerprint, skip.step, skip.reason) == ("fp-s", 150, "backlog-latest")
        assert store.runs() == ["a", "b"]

        assert store.rule_states("a") == {"decline": {"best": 0.6, "wait": 1}}
        assert store.rule_states("b") == {}
        store.save_rule_states("a", {"decline": {"best": 0.6, "wait": 2}, "slope": {"n": 1}})
        assert store.rule_states("a") == {"decline": {"best": 0.6, "wait": 2}, "slope": {"n": 1}}
        (decision,) = store.decisions("a", evaluation_id=first)
        assert (decision.rule, decision.stop, decision.reason) == ("decline", True, "fell")
        assert decision.state == {"wait": 2} and store.decisions("a", one_hundred.id) == []
        stop = store.stop_for("a")
        assert stop is not None and (stop.evaluation_id, stop.rule) == (first, "decline")
        assert stop.payload == {"value": 0.4, "best": 0.6} and store.stop_for("b") is None


def test_evaluations_come_in_step_order_with_unknown_steps_last(database: Path) -> None:
    with Store(database) as store:
        for step, fingerprint in [(300, "c"), (None, "x"), (100, "a"), (None, "y"), (200, "b")]:
            record(store, step, fingerprint)
        record(store, 50, "other", run="b")
        assert [e.fingerprint for e in store.evaluations("a")] == ["a", "b", "c", "x", "y"]
        assert [(e.run, e.step) for e in store.evaluations()][:2] == [("a", 100), ("a", 200)]
        assert store.evaluations()[-1].run == "b"


def test_recording_the_same_checkpoint_again_changes_nothing(database: Path) -> None:
    with Store(database) as store:
        first = record(store, 100, "fp", within=0.5)
        assert record(store, 100, "fp", within=0.9) == first
        (only,) = store.evaluations("a")
        assert only.within_class == 0.5  # the first result stands
        assert record(store, 100, "fp", run="b") != first  # runs are separate


def test_a_stop_is_raised_once_and_never_replaced(database: Path) -> None:
    with Store(database) as store:
        evaluation_id = record(store, 100, "fp")
        assert store.record_stop("a", evaluation_id, "decline", "first", {"value": 1})
        assert not store.record_stop("a", evaluation_id, "slope", "second", {"value": 2})
        stop = store.stop_for("a")
        assert stop is not None and (stop.rule, stop.reason) == ("decline", "first")


def test_a_restarted_store_sees_everything(database: Path) -> None:
    with Store(database) as store:
        fill(store)
        before = snapshot(store)
    with Store(database) as again:
        assert snapshot(again) == before
        assert again.schema_version == Store.SCHEMA_VERSION == SCHEMA_VERSION
    with Store(database, readonly=True) as reader:
        assert snapshot(reader) == before


def test_a_stored_result_reads_back_as_the_engine_value(database: Path) -> None:
    cosine = ClassStiffness.from_sums([[0.6, -0.4], [0.2, 1.0]], [[2, 4], [2, 2]])
    result = StiffnessResult(
        mode="class",
        classes=(0, 1),
        probe_loss=0.3,
        probe_accuracy=0.75,
        cosine=cosine,
        sign=None,
        counts=Counts(
            examples=4, per_class=(2, 2), zero_gradient=0, train_examples=0, parameters=10
        ),
        gradient_norms=(1.0, None, 2.0, 3.0),
        timings={"total": 0.5},
    )
    identity = {"run": "a", "step": 5, "step_source": "filename", "checkpoint": "/c.pt"}
    with Store(database) as store:
        store.record_evaluation(
            "a",
            path="/c.pt",
            fingerprint="fp",
            size=1,
            mtime_ns=1,
            evaluation={**identity, "format": "state_dict", **result.to_dict()},
            duration_seconds=0.5,
        )
        (stored,) = store.evaluations("a")
    assert stored.stiffness_result() == result
    assert stored.within_class == cosine.within


def test_non_finite_values_are_refused_and_nothing_is_stored(database: Path) -> None:
    with Store(database) as store:
        with pytest.raises(ValueError):
            record(store, 1, "fp", within=math.nan)
        with pytest.raises(ValueError, match=r"^evaluation step must be an int or None, got True$"):
            record(store, True, "fp")
        assert store.evaluations() == []
        with pytest.raises(ValueError):
            store.save_rule_states("a", {"decline": {"best": math.inf}})
        assert store.rule_states("a") == {}


def test_a_transaction_commits_all_or_nothing(database: Path) -> None:
    with Store(database) as store:
        with pytest.raises(RuntimeError), store.transaction():
            evaluation_id = record(store, 1, "fp")
            store.record_decisions("a", evaluation_id, [Decision("r", False, "fine", {})])
            raise RuntimeError("crash between the writes")
        assert store.evaluations() == [] and store.decisions("a") == []

        with store.transaction():
            evaluation_id = record(store, 1, "fp")
            with pytest.raises(StoreError, match=says(database) + ".*FOREIGN KEY constraint"):
                store.record_decisions("a", 999, [Decision("r", True, "bad id", {})])
            store.record_decisions("a", evaluation_id, [Decision("r", False, "fine", {})])
        assert [d.reason for d in store.decisions("a")] == ["fine"]
        assert len(store.evaluations()) == 1


def test_a_read_only_store_refuses_writes_and_a_closed_one_everything(database: Path) -> None:
    Store(database).close()
    reader = Store(database, readonly=True)
    with pytest.raises(StoreError, match=says(database, "the store was opened read-only")):
        record(reader, 1, "fp")
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(StoreError, match=says(database, "the store is closed")):
        reader.evaluations()


def test_missing_folders_are_created_private(tmp_path: Path) -> None:
    database = tmp_path / "deep" / "er" / "state.db"
    Store(database).close()
    for folder in (tmp_path / "deep", tmp_path / "deep" / "er"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_store_can_be_handed_to_another_thread(database: Path) -> None:
    store = Store(database)
    ids: list[int] = []
    worker = threading.Thread(target=lambda: ids.append(record(store, 1, "fp")))
    worker.start()
    worker.join()
    assert [e.id for e in store.evaluations()] == ids
    store.close()


def test_a_reader_in_another_process_reads_while_the_daemon_writes(database: Path) -> None:
    with Store(database) as writer:
        for step in range(1, 21):
            record(writer, step, f"fp-{step}")
        reader = subprocess.Popen(
            [sys.executable, str(WRITER), "read", str(database), "1.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        step = 20
        deadline = time.monotonic() + 15
        while reader.poll() is None and time.monotonic() < deadline:
            step += 1
            record(writer, step, f"fp-{step}", classes=20)
            time.sleep(0.002)
        out, err = reader.communicate(timeout=15)
    assert reader.returncode == 0, err
    reads, last_seen = map(int, out.split())
    assert reads > 10
    assert 20 < last_seen <= step  # it saw rows written while it was reading


def test_kill_9_loses_nothing_that_was_committed(database: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), "write", str(database)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    printed: list[int] = []
    try:
        while len(printed) < 200:
            line = writer.stdout.readline()
            assert line, writer.stderr.read() if writer.stderr else "writer died"
            printed.append(int(line))
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        out, _ = writer.communicate(timeout=10)
    printed += [int(line) for line in out.split()]  # committed before the kill landed
    assert writer.returncode == -signal.SIGKILL

    with Store(database, readonly=True) as reader:  # a reader first: it replays the WAL
        stored = {e.id for e in reader.evaluations()}
    assert set(printed) <= stored
    with Store(database) as store:
        assert {e.id for e in store.evaluations()} == stored
        next_id = record(store, None, "after-restart")
        assert next_id > max(stored)
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()


# -- schema versions and files that are not (our) store ------------------------------------


def make_version_1(database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(database)
    connection.executescript(VERSION_1)
    connection.close()


def test_a_version_1_database_migrates_forward(database: Path) -> None:
    make_version_1(database)
    stale = f"store schema version 1, this release reads version {SCHEMA_VERSION}; start the daemon"
    with pytest.raises(StoreError, match=says(database, stale)):
        Store(database, readonly=True)  # readers never migrate
    with Store(database) as store:
        assert store.schema_version == SCHEMA_VERSION
        (old,) = store.evaluations("old")
        assert (old.id, old.step, old.result) == (7, 100, {"step": 100})
        assert store.record_stop("old", old.id, "decline", "fell", {})  # version 2 tables
    with Store(database, readonly=True) as reader:
        assert reader.stop_for("old") is not None


def test_a_failed_migration_leaves_the_old_version(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_version_1(database)
    real = monitor.store.schema.apply_migrations

    def crash_half_way(connection: sqlite3.Connection, current: int) -> int:
        real(connection, current)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(monitor.store.database, "apply_migrations", crash_half_way)
    with pytest.raises(StoreError, match=says(database) + ".*disk I/O error"):
        Store(database)
    connection = sqlite3.connect(database)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert connection.execute("PRAGMA user_version").fetchone() == (1,)
    assert "stops" not in tables and "evaluations" in tables
    connection.close()


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_a_newer_database_is_refused_naming_both_versions(database: Path, readonly: bool) -> None:
    Store(database).close()
    connection = sqlite3.connect(database)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.close()
    newer = f"store schema version {SCHEMA_VERSION + 5} is newer than this release understands "
    newer += f"(up to version {SCHEMA_VERSION})"
    with pytest.raises(StoreError, match=says(database, newer)):
        Store(database, readonly=readonly)


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
@pytest.mark.parametrize("content", [b"not a database\n" * 40, b"SQ"], ids=["garbage", "short"])
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(
    database: Path, content: bytes, readonly: bool
) -> None:
    database.parent.mkdir()
    database.write_bytes(content)
    with pytest.raises(StoreError, match=says(database, "not an SQLite database")) as raised:
        Store(database, readonly=readonly)
    assert isinstance(raised.value, MonitorError)
    assert database.read_bytes() == content
    assert sorted(p.name for p in database.parent.iterdir()) == ["state.db"]


def test_another_applications_database_is_refused_and_left_alone(database: Path) -> None:
    database.parent.mkdir()
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE bookmarks (url TEXT)")
    connection.commit()
    connection.close()
    content = database.read_bytes()
    other = "an SQLite database that is not a stiffness-monitor store"
    with pytest.raises(StoreError, match=says(database, other)):
        Store(database)
    assert database.read_bytes() == content


def test_reading_a_store_that_does_not_exist_is_an_error(database: Path) -> None:
    with pytest.raises(StoreError, match=says(database, "no store here")):
        Store(database, readonly=True)
    assert not database.parent.exists()  # a reader creates nothing
    database.parent.mkdir()
    database.touch()  # created by a daemon that has not set it up yet
    with pytest.raises(StoreError, match=says(database, "the store is empty")):
        Store(database, readonly=True)


def test_a_folder_at_the_path_is_an_error_naming_it(database: Path) -> None:
    database.mkdir(parents=True)
    with pytest.raises(StoreError, match=says(database, "cannot open the store")):
        Store(database)


def test_strict_json_in_the_store(database: Path) -> None:
    with Store(database) as store:
        record(store, 1, "fp")
    connection = sqlite3.connect(database)
    (text,) = connection.execute("SELECT result_json FROM evaluations").fetchone()
    connection.close()
    assert json.loads(text) == evaluation(1)
