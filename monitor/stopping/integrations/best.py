"""Where the callbacks find the best checkpoint to restore when the stop comes."""

from __future__ import annotations

import os
from typing import Any

from monitor.stopping.trainer import best_checkpoint


def best_path(
    stop_file: str | os.PathLike[str], stop_info: dict[str, Any] | None, since: float
) -> str | None:
    """The stop file's ``best_checkpoint`` (rank 0 read it), else the best-checkpoint file
    beside the stop file (every rank can read that one), else None."""
    best = (stop_info or {}).get("best_checkpoint")
    if isinstance(best, dict) and isinstance(best.get("path"), str):
        return str(best["path"])
    found = best_checkpoint(os.path.dirname(os.fspath(stop_file)) or ".", since=since)
    return None if found is None else str(found["path"])
