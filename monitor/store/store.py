"""Every result the daemon produced, in one SQLite file that survives restarts and crashes.

``Store`` is the store's vocabulary: evaluations, errors and skipped checkpoints, rule state,
decisions and stops, each written by a ``record_*``/``save_*`` call and read back as the frozen
rows of ``monitor.store.schema``. The file underneath (opening, pragmas, migrations, refusing
the wrong file, transactions) is ``monitor.store.database``'s job. Each ``record_*`` call is
one transaction, so a crash leaves all of one evaluation or none of it, and
``store.transaction()`` groups several calls (decisions, rule state, a stop) into one when
they must land together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.store.database import Database, StoreError
from monitor.store.schema import (
    SCHEMA_VERSION,
    DecisionLike,
    StoredDecision,
    StoredError,
    StoredEvaluation,
    StoredSkip,
    StoredStop,
)

__all__ = [
    "SCHEMA_VERSION",
    "DecisionLike",
    "Store",
    "StoreError",
    "StoredDecision",
    "StoredError",
    "StoredEvaluation",
    "StoredSkip",
    "StoredStop",
]


def _json(value: Mapping[str, Any]) -> str:
    """Strict JSON: a NaN here is a bug upstream and must fail loudly, not be stored."""
    return json.dumps(dict(value), allow_nan=False, separators=(",", ":"))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


class Store(Database):
    """The state database, opened for writing (the daemon) or read-only (everyone else).

    One connection per ``Store``. Calls are serialised by a lock, so a ``Store`` may be handed
    between threads, but it is meant for one thread at a time: several threads gain nothing.
    Open one ``Store`` per process; readers in other processes open their own, read-only.
    """

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
        may already have acted on the first one. It is pending until ``mark_stop_written``:
        committing first and writing the file second means a crash or a failed write leaves a
        stop to retry, never a stop file the store does not know about.
        """
        added = self._execute(
            "INSERT INTO stops (run, evaluation_id, rule, reason, payload_json, at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run) DO NOTHING",
            (run, evaluation_id, rule, reason, _json(payload), time.time()),
        )
        return added == 1

    def mark_stop_written(self, run: str) -> bool:
        """Note that the run's stop file is written; False when it was noted before.

        Only the first write counts: a stop file that is absent after it was the operator's
        doing and is never rewritten.
        """
        written = self._execute(
            "UPDATE stops SET written_at = ? WHERE run = ? AND written_at IS NULL",
            (time.time(), run),
        )
        return written == 1

    def stop_for(self, run: str) -> StoredStop | None:
        """The stop raised for ``run``, or None while it runs on."""
        rows = self._rows(
            "SELECT run, evaluation_id, rule, reason, payload_json, at, written_at FROM stops"
            " WHERE run = ?",
            (run,),
        )
        if not rows:
            return None
        run_, evaluation_id, rule, reason, payload, at, written_at = rows[0]
        return StoredStop(run_, evaluation_id, rule, reason, json.loads(payload), at, written_at)
