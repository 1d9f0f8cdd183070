"""The decision layer's tables: attempts, rule state, verdicts and stops.

``Store`` builds on this class with the evaluation tables; it is apart so that each file keeps
one vocabulary. An *attempt* is one training run into a run's folder: attempt 1 begins with the
run, and a rerun into the same folder (its steps start again lower, or an evaluated checkpoint
is replaced) or ``stiffness-monitor reset`` begins the next. Each attempt has its own history,
rule state and stop; nothing of an earlier attempt is ever deleted, so ``backtest`` and
``report`` can still show it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.store.database import Database
from monitor.store.rows import DecisionLike, StoredAttempt, StoredDecision, StoredStop


def as_json(value: Mapping[str, Any]) -> str:
    """Strict JSON: a NaN here is a bug upstream and must fail loudly, not be stored."""
    return json.dumps(dict(value), allow_nan=False, separators=(",", ":"))


class Verdicts(Database):
    """Attempts, rule state, decisions and stops of each run (see ``Store``)."""

    # -- attempts --------------------------------------------------------------------------

    def current_attempt(self, run: str) -> int:
        """The attempt new evaluations of ``run`` belong to (1 until a rerun or a reset)."""
        rows = self._rows(
            "SELECT MAX(attempt) FROM (SELECT attempt FROM attempts WHERE run = ?"
            " UNION ALL SELECT attempt FROM evaluations WHERE run = ?)",
            (run, run),
        )
        return int(rows[0][0] or 1)

    def start_attempt(self, run: str, reason: str) -> int:
        """Begin the next attempt of ``run`` and return its number; its rule state starts
        empty. The earlier attempts' rows stay."""
        with self.transaction():
            attempt = self.current_attempt(run) + 1
            self._execute(
                "INSERT INTO attempts (run, attempt, reason, started_at) VALUES (?, ?, ?, ?)",
                (run, attempt, reason, time.time()),
            )
            self._execute("DELETE FROM rule_state WHERE run = ?", (run,))
        return attempt

    def attempts(self, run: str) -> list[StoredAttempt]:
        """Every attempt of ``run``, first to last (attempt 1 always, even before any row)."""
        rows = self._rows(
            "SELECT attempt, reason, started_at FROM attempts WHERE run = ? ORDER BY attempt",
            (run,),
        )
        found = [StoredAttempt(run, 1, "first", None)]
        found += [StoredAttempt(run, int(a), str(why), float(at)) for a, why, at in rows]
        last = self.current_attempt(run)  # evaluations of an attempt whose row is missing
        known = {item.attempt for item in found}
        found += [StoredAttempt(run, a, "unknown", None) for a in range(2, last + 1)
                  if a not in known]  # fmt: skip
        return sorted(found, key=lambda item: item.attempt)

    # -- rule state, decisions, stops ------------------------------------------------------

    def save_rule_states(self, run: str, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Upsert each named rule's state (rules not named keep theirs), all at once."""
        now = time.time()
        self._execute_many(
            "INSERT INTO rule_state (run, rule, state_json, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run, rule) DO UPDATE SET state_json = excluded.state_json,"
            " updated_at = excluded.updated_at",
            [(run, rule, as_json(state), now) for rule, state in states.items()],
        )

    def rule_states(self, run: str) -> dict[str, dict[str, Any]]:
        """The current attempt's saved rule states, by rule name."""
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
                (run, evaluation_id, d.rule, int(bool(d.stop)), d.reason, as_json(d.state), now)
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
        self,
        run: str,
        evaluation_id: int,
        rule: str,
        reason: str,
        payload: Mapping[str, Any],
        attempt: int = 1,
    ) -> bool:
        """Raise the stop of one attempt of a run; False, and nothing changed, when it was
        raised before.

        A stop is raised once per attempt and never silently retracted or rewritten: the
        trainer may already have acted on the first one. It is pending until
        ``mark_stop_written``: committing first and writing the file second means a crash or a
        failed write leaves a stop to retry, never a stop file the store does not know about.
        """
        added = self._execute(
            "INSERT INTO stops (run, attempt, evaluation_id, rule, reason, payload_json, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run, attempt) DO NOTHING",
            (run, attempt, evaluation_id, rule, reason, as_json(payload), time.time()),
        )
        return added == 1

    def mark_stop_written(self, run: str, attempt: int = 1) -> bool:
        """Note that the attempt's stop file is written; False when it was noted before.

        Only the first write counts: a stop file that is absent after it was the operator's
        doing and is never rewritten.
        """
        written = self._execute(
            "UPDATE stops SET written_at = ? WHERE run = ? AND attempt = ? AND written_at IS NULL",
            (time.time(), run, attempt),
        )
        return written == 1

    def stop_for(self, run: str, attempt: int | None = None) -> StoredStop | None:
        """The stop raised for ``run``'s attempt (by default the current one), or None."""
        attempt = self.current_attempt(run) if attempt is None else attempt
        rows = self._rows(
            "SELECT run, evaluation_id, rule, reason, payload_json, at, written_at, attempt"
            " FROM stops WHERE run = ? AND attempt = ?",
            (run, attempt),
        )
        if not rows:
            return None
        run_, evaluation_id, rule, reason, payload, at, written_at, attempt_ = rows[0]
        return StoredStop(
            run_, evaluation_id, rule, reason, json.loads(payload), at, written_at, attempt_
        )
