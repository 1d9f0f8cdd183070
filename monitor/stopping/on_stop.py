"""The optional ``on_stop`` command the daemon runs once a run's stop file is written.

:func:`run_on_stop` runs the operator's command (an argument list, never a shell) with the stop
JSON on stdin and a few ``STIFFNESS_STOP_*`` environment variables, and kills the command's
whole process group when the timeout expires. A failing command is reported, never raised:
the stop file (``stop_file``) is the signal, the command is a courtesy.
"""

from __future__ import annotations

import logging
import os
import signal as signals
import subprocess
import time as clock
from dataclasses import dataclass
from pathlib import Path

from monitor.stopping.stop_file import StopSignal

log = logging.getLogger("monitor.stop")

#: How much of the on_stop command's output is kept (the tail: errors come last).
OUTPUT_TAIL_CHARS = 4000


@dataclass(frozen=True)
class OnStopOutcome:
    """What the ``on_stop`` command did. ``returncode`` is None when it never ran or timed out."""

    argv: tuple[str, ...]
    returncode: int | None
    timed_out: bool
    output: str  # the tail of stdout and stderr, interleaved
    duration: float  # seconds
    error: str | None = None  # why it did not run or did not finish

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


def run_on_stop(
    argv: list[str] | tuple[str, ...],
    signal: StopSignal,
    timeout: float,
    stop_file: str | Path | None = None,
) -> OnStopOutcome:
    """Run the operator's ``on_stop`` command once and report what happened; never raises for it.

    The stop JSON is passed on stdin and the environment gains ``STIFFNESS_STOP_RUN``,
    ``_STEP``, ``_RULE``, ``_CHECKPOINT`` and ``_FILE`` (empty when there is no stop file).
    The command runs in its own session, so on timeout its whole process group is killed:
    a shell script's children do not outlive it or hold its output open.
    """
    if not argv:
        raise ValueError("expected a non-empty on_stop argument list")
    command = tuple(os.fspath(part) for part in argv)
    env = {
        **os.environ,
        "STIFFNESS_STOP_RUN": signal.run,
        "STIFFNESS_STOP_STEP": str(signal.step),
        "STIFFNESS_STOP_RULE": signal.rule,
        "STIFFNESS_STOP_CHECKPOINT": signal.checkpoint,
        "STIFFNESS_STOP_FILE": "" if stop_file is None else os.fspath(stop_file),
    }
    started = clock.monotonic()
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        outcome = OnStopOutcome(command, None, False, "", 0.0, f"cannot run {command[0]!r}: {exc}")
        log.warning("on_stop command for run %s did not run: %s", signal.run, outcome.error)
        return outcome
    with process:
        timed_out = False
        try:
            output, _ = process.communicate(signal.to_json().encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            try:
                output, _ = process.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a descendant escaped the group and holds the pipe
                output = b""
    outcome = OnStopOutcome(
        argv=command,
        returncode=None if timed_out else process.returncode,
        timed_out=timed_out,
        output=output.decode("utf-8", errors="replace")[-OUTPUT_TAIL_CHARS:],
        duration=clock.monotonic() - started,
        error=f"timed out after {timeout:g} s and was killed" if timed_out else None,
    )
    if outcome.ok:
        log.info("on_stop command for run %s finished in %.1f s", signal.run, outcome.duration)
    else:
        log.warning(
            "on_stop command for run %s failed (%s); output tail: %s",
            signal.run,
            outcome.error or f"exit code {outcome.returncode}",
            outcome.output.strip()[-500:] or "(none)",
        )
    return outcome


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signals.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:
        process.kill()
