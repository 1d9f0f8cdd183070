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

import time
from collections.abc import Mapping
from typing import Any

from monitor.store.database import StoreError
from monitor.store.rows import (
    DecisionLike,
    StoredAttempt,
    StoredDecision,
    StoredError,
    StoredEvaluation,
    StoredSkip,
    StoredStop,
)
from monitor.store.schema import SCHEMA_VERSION
from monitor.store.verdicts import Verdicts, as_json

__all__ = [
    "SCHEMA_VERSION",
    "DecisionLike",
    "Store",
    "StoreError",
    "StoredAttempt",
    "StoredDecision",
    "StoredError",
    "StoredEvaluation",
    "StoredSkip",
    "StoredStop",
]


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


class Store(Verdicts):
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
        attempt: int = 1,
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
            as_json(evaluation),
            int(attempt),
        )
        with self.transaction():
            self._execute(
                "INSERT INTO evaluations (run, path, step, step_source, format, size, mtime_ns,"
                " fingerprint, evaluated_at, duration_seconds, within_class, probe_loss,"
                " probe_accuracy, result_json, attempt)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run, fingerprint) DO NOTHING",
                values,
            )
            sql = "SELECT id FROM evaluations WHERE run = ? AND fingerprint = ?"
            return int(self._rows(sql, (run, fingerprint))[0][0])

    def evaluations(
        self, run: str | None = None, attempt: int | None = None
    ) -> list[StoredEvaluation]:
        """In training order: by attempt, then step (unknown steps last), then evaluation time.

        Without ``run``, every run's evaluations, grouped by run name; without ``attempt``,
        every attempt's.
        """
        rows = self._rows(
            "SELECT id, run, path, step, step_source, format, size, mtime_ns, fingerprint,"
            " evaluated_at, duration_seconds, within_class, probe_loss, probe_accuracy,"
            " result_json, attempt FROM evaluations WHERE (? IS NULL OR run = ?)"
            " AND (? IS NULL OR attempt = ?)"
            " ORDER BY run, attempt, step IS NULL, step, evaluated_at, id",
            (run, run, attempt, attempt),
        )
        return [StoredEvaluation(*row) for row in rows]

    def checkpoints_of(self, run: str, attempt: int) -> list[tuple[str, int | None, str, int]]:
        """``(path, step, fingerprint, mtime_ns)`` of each checkpoint an attempt evaluated, in
        evaluation order: what telling a rerun from the same run needs, without the results."""
        rows = self._rows(
            "SELECT path, step, fingerprint, mtime_ns FROM evaluations"
            " WHERE run = ? AND attempt = ? ORDER BY id",
            (run, attempt),
        )
        return [(str(p), None if s is None else int(s), str(f), int(m)) for p, s, f, m in rows]

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
