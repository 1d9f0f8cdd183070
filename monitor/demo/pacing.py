"""Keeps the demo's trainer at most a few checkpoints ahead of the monitor.

The demo shows one story: the monitor watches training and stops it. On a slow or busy
machine an evaluation can take longer than the demo's short epochs, the monitor falls behind,
and the trainer finishes all its epochs before the stop it would have obeyed is written. A
real job's epochs are minutes long, so there the monitor keeps up; here the demo pauses the
trainer (SIGSTOP) while it is more than ``lead`` checkpoints ahead and lets it go on (SIGCONT)
once the monitor has caught up, so every machine shows the same stop.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

#: A pause never lasts longer than this: a checkpoint the monitor cannot evaluate must not
#: hold the trainer forever.
LONGEST_PAUSE = 30.0


class Pacer:
    """Call ``update`` with the evaluations stored so far, as often as convenient."""

    def __init__(self, trainer: subprocess.Popen[bytes], checkpoints: Path, lead: int = 2) -> None:
        self.trainer, self.checkpoints, self.lead = trainer, checkpoints, lead
        self.paused_at: float | None = None
        self.pauses = 0

    def update(self, evaluated: int) -> None:
        if self.trainer.poll() is not None:
            return
        behind = len(list(self.checkpoints.glob("step_*.pt"))) - evaluated
        if self.paused_at is None and behind > self.lead:
            self.trainer.send_signal(signal.SIGSTOP)
            self.paused_at, self.pauses = time.monotonic(), self.pauses + 1
        elif self.paused_at is not None and (
            behind <= 1 or time.monotonic() - self.paused_at > LONGEST_PAUSE
        ):
            self.release()

    def release(self) -> None:
        """Let the trainer run again (also before it is stopped: a paused process cannot end)."""
        if self.paused_at is not None and self.trainer.poll() is None:
            self.trainer.send_signal(signal.SIGCONT)
        self.paused_at = None
