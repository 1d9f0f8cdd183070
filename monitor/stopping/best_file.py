"""The best checkpoint, daemon side: a small JSON file a trainer can read at any moment.

The stop file says *when* to stop; this file says *what to keep*: the best checkpoint of the
run's current attempt so far, rewritten (atomically, never through a symlink, like the stop
file) each time a better one is evaluated. Trainers read it with
``monitor.stopping.trainer.best_checkpoint``, and the Lightning and Hugging Face callbacks
restore its weights when the stop comes if asked to (Keras's ``restore_best_weights``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.stopping.stop_file import (
    FORMAT_VERSION,
    StopSignalError,
    read_existing,
    utc_now,
    write_atomically,
)


def best_payload(run: str, attempt: int, best: Mapping[str, Any]) -> dict[str, Any]:
    """The file's JSON object: the best checkpoint (``metric``, ``mode``, ``step``, ``value``,
    ``path``) with the run and attempt it belongs to."""
    return {"version": FORMAT_VERSION, "run": run, "attempt": attempt, **best, "time": utc_now()}


def write_best_file(path: Path, payload: Mapping[str, Any]) -> None:
    """Replace the best file with ``payload``; ``StopSignalError`` when that is not safe or
    fails (a symlink or folder at the path, permissions, a full disk)."""
    read_existing(path)  # refuses a symlink or a non-file at the path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StopSignalError(f"cannot create the folder of best file {path}: {exc}") from exc
    text = json.dumps(dict(payload), allow_nan=False, ensure_ascii=False) + "\n"
    write_atomically(path, text.encode("utf-8"))
