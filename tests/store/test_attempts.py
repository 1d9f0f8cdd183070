"""Attempts in the store: numbered per run, each with its own history, rule state and stop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from monitor.store.schema import MIGRATIONS, apply_migrations
from monitor.store.store import Store


def record(store: Store, run: str, step: int, attempt: int) -> int:
    return store.record_evaluation(
        run, path=f"/r/step_{step}.pt", fingerprint=f"{attempt}-{step}", size=1, mtime_ns=step,
        evaluation={"step": step, "probe_loss": 1.0 / step}, duration_seconds=0.1,
        attempt=attempt,
    )  # fmt: skip


def test_attempts_keep_their_own_history_state_and_stop(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db") as store:
        assert store.current_attempt("a") == 1 and [x.attempt for x in store.attempts("a")] == [1]
        first = record(store, "a", 10, 1)
        store.save_rule_states("a", {"r": {"wait": 3}})
        assert store.record_stop("a", first, "r", "why", {"step": 10}, attempt=1)
        assert store.start_attempt("a", "the step went back from 10 to 5") == 2
        assert store.current_attempt("a") == 2 and store.current_attempt("b") == 1
        assert store.rule_states("a") == {}  # the new attempt starts with no rule state
        assert store.stop_for("a") is None  # the current attempt has not stopped
        stop = store.stop_for("a", 1)
        assert stop is not None and stop.attempt == 1 and stop.payload == {"step": 10}
        second = record(store, "a", 5, 2)
        assert store.record_stop("a", second, "r", "again", {"step": 5}, attempt=2)
        assert not store.record_stop("a", second, "r", "twice", {"step": 5}, attempt=2)
        assert [e.step for e in store.evaluations("a", 1)] == [10]
        assert [(e.step, e.attempt) for e in store.evaluations("a")] == [(10, 1), (5, 2)]
        assert store.checkpoints_of("a", 2) == [("/r/step_5.pt", 5, "2-5", 5)]
        assert store.mark_stop_written("a", 2) and not store.mark_stop_written("a", 2)
        stop_1 = store.stop_for("a", 1)
        assert stop_1 is not None and stop_1.pending  # attempt 1's stop is its own
        reasons = [(x.attempt, x.reason) for x in store.attempts("a")]
        assert reasons == [(1, "first"), (2, "the step went back from 10 to 5")]


def test_a_version_3_store_migrates_its_stops_to_attempt_1(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path, isolation_level=None)
    apply_migrations(db, 0, MIGRATIONS[:3])
    db.execute(
        "INSERT INTO evaluations (run, path, step, step_source, format, size, mtime_ns,"
        " fingerprint, evaluated_at, duration_seconds, result_json)"
        " VALUES ('a', '/r/s.pt', 7, 'name', 'torch', 1, 1, 'f', 0, 0, '{}')"
    )
    db.execute(
        "INSERT INTO stops (run, evaluation_id, rule, reason, payload_json, at, written_at)"
        " VALUES ('a', 1, 'r', 'why', '{\"step\": 7}', 1.0, 2.0)"
    )
    db.close()
    with Store(path) as store:
        stop = store.stop_for("a")
        assert stop is not None and stop.attempt == 1 and stop.written_at == 2.0
        assert [e.attempt for e in store.evaluations("a")] == [1]
        assert store.start_attempt("a", "reset by hand") == 2
