"""The demo keeps its trainer at most a few checkpoints ahead of the monitor: a real process,
paused with SIGSTOP while it is too far ahead and let go with SIGCONT once the monitor caught
up (or after the longest pause), and always able to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.demo import pacing
from monitor.demo.pacing import Pacer

# A "trainer" that writes a checkpoint file every 0.1 s, as fast as it is let.
WRITER = """
import sys, time
from pathlib import Path
folder = Path(sys.argv[1])
for step in range(1, 1000):
    (folder / f"step_{step}.pt").write_bytes(b"x")
    time.sleep(0.1)
"""


def written(folder: Path) -> int:
    return len(list(folder.glob("step_*.pt")))


def test_the_trainer_waits_for_the_monitor_and_can_always_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    try:
        pacer = Pacer(trainer, tmp_path, lead=2)
        evaluated = 0
        deadline = time.monotonic() + 30
        while pacer.paused_at is None and time.monotonic() < deadline:
            pacer.update(evaluated)  # the monitor has evaluated nothing yet
            time.sleep(0.05)
        assert pacer.paused_at is not None and pacer.pauses == 1
        time.sleep(0.5)
        held = written(tmp_path)
        time.sleep(0.5)
        assert written(tmp_path) == held  # paused: no new checkpoint
        pacer.update(held - 2)  # still two behind: stays paused
        assert pacer.paused_at is not None
        pacer.update(held - 1)  # caught up: it goes on
        assert pacer.paused_at is None
        time.sleep(0.5)
        assert written(tmp_path) > held
        monkeypatch.setattr(pacing, "LONGEST_PAUSE", 0.0)
        pacer.update(0)  # far behind: paused again ...
        assert pacer.paused_at is not None and pacer.pauses == 2
        time.sleep(0.01)
        pacer.update(0)  # ... but never for longer than the longest pause
        assert pacer.paused_at is None
        pacer.update(0)
        assert pacer.paused_at is not None  # paused once more, then stopped as the demo does
        trainer.send_signal(signal.SIGCONT)
        trainer.terminate()
        assert trainer.wait(timeout=10) != 0
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
