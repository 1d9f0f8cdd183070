"""The ``on_stop`` command: the stop's JSON on stdin and in the environment, failures reported
and not raised, long output cut to its tail, a hanging command killed with its children."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from monitor.stopping.on_stop import OUTPUT_TAIL_CHARS, run_on_stop
from tests.stopping.test_stop_file import make_signal

HANG = 600  # seconds the hanging command would take: far beyond any wait here


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_on_stop_gets_the_json_on_stdin_and_the_environment(tmp_path: Path) -> None:
    command = python(
        """
        import json, os, sys
        stop = json.load(sys.stdin)
        print(stop["run"], stop["step"], stop["rule"])
        print(*(os.environ["STIFFNESS_STOP_" + k] for k in ("RUN", "STEP", "FILE")))
        """
    )
    outcome = run_on_stop(command, make_signal(), timeout=60, stop_file=tmp_path / "STOP")
    assert outcome.ok, outcome
    assert outcome.returncode == 0 and not outcome.timed_out and outcome.error is None
    assert outcome.output.splitlines() == [
        "run-a 1200 within-decline",
        f"run-a 1200 {tmp_path / 'STOP'}",
    ]


def test_a_failing_on_stop_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    command = python("import sys; print('cleaning up'); sys.exit('boom')")
    with caplog.at_level(logging.WARNING, logger="monitor.stop"):
        outcome = run_on_stop(command, make_signal(), timeout=60)
    assert not outcome.ok and outcome.returncode == 1 and not outcome.timed_out
    assert "cleaning up" in outcome.output and "boom" in outcome.output
    assert any("boom" in r.getMessage() for r in caplog.records)


def test_only_the_tail_of_long_output_is_kept() -> None:
    outcome = run_on_stop(python("print('a' * 10000 + 'END')"), make_signal(), timeout=60)
    assert len(outcome.output) == OUTPUT_TAIL_CHARS and outcome.output.rstrip().endswith("END")


def alive(pid: int) -> bool:
    """Whether ``pid`` is running (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_a_hanging_on_stop_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # A shell, not Python: it has started its child within milliseconds, however loaded the
    # machine, so the timeout always finds a child to kill.
    command = ["/bin/sh", "-c", f"sleep {HANG} & echo $! > '{pid_file}'; wait"]
    started = time.monotonic()
    outcome = run_on_stop(command, make_signal(), timeout=3)
    assert time.monotonic() - started < HANG / 2  # the timeout ended it, not the command
    assert outcome.timed_out and outcome.returncode is None and not outcome.ok
    assert outcome.error is not None and "timed out" in outcome.error
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the command's child outlived the timeout"


def test_a_missing_executable_is_an_error_outcome() -> None:
    outcome = run_on_stop(["/nonexistent/notify-team", "--run"], make_signal(), timeout=5)
    assert not outcome.ok and outcome.returncode is None and not outcome.timed_out
    assert outcome.error is not None and "/nonexistent/notify-team" in outcome.error
