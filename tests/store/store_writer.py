"""A second process for the store tests: a writer to kill, or a reader beside a live writer.

    python tests/store/store_writer.py write DB      record evaluations forever, print each id once
                                               its transaction has committed
    python tests/store/store_writer.py read DB SECS  read the store read-only for SECS seconds while
                                               another process writes; exit 1 on any error

Run as a script (not imported) so that the process is as separate as a real daemon and a real
``report`` are: its own interpreter, its own SQLite connection, no shared locks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from monitor.store.store import Store


def evaluation(step: int | None, within: float | None = 0.5, classes: int = 3) -> dict[str, Any]:
    """A JSON-ready evaluation shaped like ``Evaluation.to_dict()``; ``classes`` sets its size."""
    matrix = [[within if a == b else 0.1 for b in range(classes)] for a in range(classes)]
    return {
        "run": None,
        "step": step,
        "step_source": "filename" if step is not None else "none",
        "checkpoint": f"/ckpt/step_{step}.pt",
        "format": "state_dict",
        "mode": "class",
        "classes": list(range(classes)),
        "probe_loss": 0.25,
        "probe_accuracy": 0.9,
        "cosine": {"matrix": matrix, "within": within, "between": 0.1, "per_class": []},
    }


def write(database: Path) -> None:
    with Store(database) as store:
        step = 0
        while True:
            step += 1
            evaluation_id = store.record_evaluation(
                "run",
                path=f"/ckpt/step_{step}.pt",
                fingerprint=f"fp-{step}",
                size=step,
                mtime_ns=step,
                evaluation=evaluation(step, classes=30),
                duration_seconds=0.01,
            )
            print(evaluation_id, flush=True)


def read(database: Path, seconds: float) -> None:
    """Alternate between a long-lived reader and fresh opens; rows only ever accumulate."""
    deadline = time.monotonic() + seconds
    kept = Store(database, readonly=True)
    seen: list[int] = []
    reads = 0
    try:
        while time.monotonic() < deadline:
            if reads % 2:
                rows = kept.evaluations()
            else:
                with Store(database, readonly=True) as fresh:
                    rows = fresh.evaluations()
            ids = [row.id for row in rows]
            if ids[: len(seen)] != seen:
                raise AssertionError(f"rows vanished or moved: had {len(seen)}, now {len(ids)}")
            if rows and rows[-1].result["step"] != rows[-1].step:
                raise AssertionError("a row's result does not match its columns")
            seen = ids
            reads += 1
    finally:
        kept.close()
    print(f"{reads} {len(seen)}", flush=True)


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    if command == "write":
        write(path)
    else:
        read(path, float(sys.argv[3]))
