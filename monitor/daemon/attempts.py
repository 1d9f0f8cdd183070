"""Telling a rerun from the run going on: which checkpoint begins a new attempt.

Users rerun training into the same folder. Without attempts, the rerun inherits the old run's
rule state and stop, and its history merges with the old one. A checkpoint begins a new attempt
when, compared with what the current attempt has evaluated,

- its step is lower than the attempt's highest step and it was written after that checkpoint
  (training started again: 384 and then 24), or
- it replaces a checkpoint the attempt evaluated (the same path, new content) at the same or a
  lower step.

A lower step written *earlier* is a slow writer finishing late, not a rerun; a second file at
the same step (Lightning's ``last.ckpt`` beside ``epoch=3-step=384.ckpt``) is the same run; a
checkpoint without a step says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

#: ``(path, step, fingerprint, mtime_ns)`` of each checkpoint the attempt evaluated.
Evaluated = tuple[str, int | None, str, int]


def new_attempt_reason(
    evaluated: Sequence[Evaluated], path: str, step: int | None, fingerprint: str, mtime_ns: int
) -> str | None:
    """Why this checkpoint begins a new attempt, or None when it continues the current one."""
    if step is None:
        return None
    for old_path, old_step, old_fingerprint, _ in evaluated:
        replaced = old_path == path and old_fingerprint != fingerprint
        if replaced and old_step is not None and step <= old_step:
            return f"{path} was replaced (step {old_step}, now {step})"
    stepped = [(old_step, mtime) for _, old_step, _, mtime in evaluated if old_step is not None]
    if not stepped:
        return None
    highest, written = max(stepped, key=lambda item: (item[0], item[1]))
    if step < highest and mtime_ns > written:
        return f"the step went back from {highest} to {step}"
    return None
