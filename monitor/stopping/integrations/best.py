"""Where the callbacks find the best checkpoint to restore when the stop comes, and the
restore itself, which must not turn the end of a long training run into a crash."""

from __future__ import annotations

import logging
import os
from typing import Any

from monitor.stopping.trainer import best_checkpoint, read_stop

log = logging.getLogger("monitor.stopping.restore")


def best_path(
    stop_file: str | os.PathLike[str], stop_info: dict[str, Any] | None, since: float
) -> str | None:
    """The stop file's ``best_checkpoint`` (the best when the stop was raised: every rank reads
    the same one), else the best-checkpoint file beside the stop file, else None."""
    info = stop_info if stop_info is not None else read_stop(stop_file, since)
    best = (info or {}).get("best_checkpoint")
    if isinstance(best, dict) and isinstance(best.get("path"), str):
        return str(best["path"])
    found = best_checkpoint(os.path.dirname(os.fspath(stop_file)) or ".", since=since)
    return None if found is None else str(found["path"])


def restore_best(
    model: Any, stop_file: str | os.PathLike[str], stop_info: dict[str, Any] | None, since: float
) -> str | None:
    """Load the best checkpoint's weights into ``model``; its path, or None when there is none
    or it cannot be loaded (one ERROR line: the trained weights are kept, training's end is
    not turned into a crash after the run's checkpoints are safely written)."""
    from monitor.stopping.restore import load_best_weights

    path = best_path(stop_file, stop_info, since)
    if path is None:
        log.warning("restore_best_weights: no best checkpoint known; the last weights are kept")
        return None
    try:
        load_best_weights(model, path)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        log.error("restore_best_weights: could not load %s (%s: %s); the last weights are kept",
                  path, type(error).__name__, error)  # fmt: skip
        return None
    return path
