"""A stop raised but not written (issue 19, item 3): pending in the store, retried, never lost.

Real stores, real folders and real OS errors: the stop file's folder is made unwritable by
putting a regular file where the folder must be, then fixed by removing it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from monitor.config.schema import MonitorConfig, load_config
from monitor.daemon.decisions import RunDecisions
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.spec import load_rules
from monitor.stopping.stop_file import StopSignal
from monitor.store.store import Store
from tests.daemon_harness import make_config

# Stops at the second evaluation whatever the numbers.
RULES = '- {"name": "second-look", "kind": "threshold", "metric": "probe_accuracy", "mode": "max",'
RULES += ' "stopping_threshold": 0.0, "min_evaluations": 2}\n'


class Setup:
    """A run whose stop file goes to ``{run_dir}/signals/STOP``, with its store and metrics."""

    def __init__(self, tmp_path: Path, on_stop: list[str] | None = None) -> None:
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        stop: dict[str, object] = {"file": "{run_dir}/signals/STOP"}
        if on_stop:
            stop["on_stop"] = on_stop
        path = make_config(tmp_path / "monitor", {"digits": self.run_dir}, stop=stop)
        path.write_text(path.read_text() + "rules:\n" + RULES)
        self.config: MonitorConfig = load_config(path)
        self.store = Store(path.parent / "state" / "state.db")
        self.metrics = MonitorMetrics()
        self.stop_file = self.run_dir / "signals" / "STOP"

    def evaluate(self, *steps: int) -> list[int]:
        """Store evaluations the way the daemon does, before the rules see them."""
        return [
            self.store.record_evaluation(
                "digits",
                path=str(self.run_dir / f"step_{step}.pt"),
                fingerprint=f"fingerprint-{step}",
                size=1,
                mtime_ns=step,
                evaluation={"run": "digits", "step": step, "probe_accuracy": 0.5},
                duration_seconds=0.1,
            )
            for step in steps
        ]

    def decisions(self) -> RunDecisions:
        """What the daemon builds per run at start-up (and on SIGHUP)."""
        rules = load_rules(self.config.rules, self.config.source)
        return RunDecisions(self.config.runs[0], rules, self.config, self.store, self.metrics)

    def block(self) -> None:
        """A regular file where the stop file's folder must go: every write fails (EEXIST)."""
        (self.run_dir / "signals").write_text("not a folder")

    def unblock(self) -> None:
        (self.run_dir / "signals").unlink()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"run": "digits", **labels})

    def pending_metric(self) -> float | None:
        return self.sample("stiffness_stop_pending")

    def failures_counted(self) -> float | None:
        return self.sample("stiffness_checkpoint_errors_total", reason="stop-file")


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_stop_that_cannot_be_written_stays_pending_and_is_written_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = Setup(tmp_path)
    setup.evaluate(1, 2)
    setup.block()
    caplog.set_level(logging.DEBUG, logger="monitor")
    decisions = setup.decisions()  # the stored history stops the run: raised now
    stored = setup.store.stop_for("digits")
    assert stored is not None and stored.pending and stored.written_at is None
    assert decisions.stop_pending and setup.pending_metric() == 1
    assert setup.sample("stiffness_early_stop") == 1
    for _ in range(3):  # three more loop turns, still blocked
        decisions.retry_pending_stop()
    assert not setup.stop_file.exists() and decisions.stop_pending
    assert setup.failures_counted() == 1  # one failure episode, one count
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "stays pending" in error.getMessage() and "signals" in error.getMessage()
    setup.unblock()
    decisions.retry_pending_stop()
    written = json.loads(setup.stop_file.read_text())
    assert (written["run"], written["rule"], written["step"]) == ("digits", "second-look", 2)
    assert written == stored.payload  # exactly the stop that was committed
    assert not decisions.stop_pending and setup.pending_metric() == 0
    after = setup.store.stop_for("digits")
    assert after is not None and not after.pending and after.written_at is not None
    assert len(messages(caplog, "no longer pending")) == 1
    mtime = setup.stop_file.stat().st_mtime_ns
    decisions.retry_pending_stop()  # nothing pending: nothing written, nothing logged
    assert setup.stop_file.stat().st_mtime_ns == mtime
    assert len(messages(caplog, "no longer pending")) == 1


def test_a_pending_stop_found_at_start_up_is_written_and_logged_as_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon killed between committing the stop and writing its file."""
    setup = Setup(tmp_path)
    _, second = setup.evaluate(1, 2)
    signal = StopSignal("digits", str(setup.run_dir / "step_2.pt"), 2, "second-look",
                        "accuracy reached 0.0", "probe_accuracy", 0.5, 0.5)  # fmt: skip
    assert setup.store.record_stop("digits", second, "second-look", signal.reason, signal.to_dict())
    caplog.set_level(logging.INFO, logger="monitor")
    decisions = setup.decisions()
    assert json.loads(setup.stop_file.read_text()) == signal.to_dict()
    assert not decisions.stop_pending and setup.pending_metric() == 0
    stored = setup.store.stop_for("digits")
    assert stored is not None and not stored.pending
    [startup] = messages(caplog, "was stopped earlier")
    assert "pending" in startup and "removed" not in startup


def test_removed_is_said_only_of_a_stop_file_once_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = Setup(tmp_path)
    setup.evaluate(1, 2)
    setup.block()
    setup.decisions()  # raised, pending
    caplog.set_level(logging.INFO, logger="monitor")
    setup.decisions()  # a restart while still blocked: pending, not "removed"
    [pending] = messages(caplog, "was stopped earlier")
    assert "pending" in pending and "removed" not in pending
    assert setup.pending_metric() == 1
    setup.unblock()
    setup.decisions()  # the next restart writes it
    assert setup.stop_file.exists()
    setup.stop_file.unlink()  # the operator lets the run go on
    caplog.clear()
    setup.decisions()
    [removed] = messages(caplog, "was stopped earlier")
    assert removed.endswith("(stop file removed)")
    assert not setup.stop_file.exists()  # never rewritten behind the operator's back
    assert setup.pending_metric() == 0


def test_on_stop_runs_once_after_the_stop_file_is_first_written(tmp_path: Path) -> None:
    marker = tmp_path / "on_stop.log"
    command = [
        sys.executable,
        "-c",
        "import os; open(" + repr(str(marker)) + ", 'a').write("
        "str(os.path.exists(os.environ['STIFFNESS_STOP_FILE'])) + '\\n')",
    ]
    setup = Setup(tmp_path, on_stop=command)
    setup.evaluate(1, 2)
    setup.block()
    decisions = setup.decisions()
    decisions.retry_pending_stop()
    assert not marker.exists()  # nobody is told about a stop file that is not there
    setup.unblock()
    decisions.retry_pending_stop()
    decisions.retry_pending_stop()
    setup.decisions()  # a restart: the stop is written, on_stop is not run again
    assert marker.read_text() == "True\n"


def test_a_different_stop_file_already_there_is_kept_and_counts_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's own stop file already signals the trainer: kept, not retried forever."""
    setup = Setup(tmp_path)
    setup.evaluate(1, 2)
    setup.stop_file.parent.mkdir()
    setup.stop_file.write_text('{"run": "digits", "rule": "by-hand", "step": 1}\n')
    caplog.set_level(logging.WARNING, logger="monitor")
    decisions = setup.decisions()
    decisions.retry_pending_stop()
    assert not decisions.stop_pending and setup.pending_metric() == 0
    assert json.loads(setup.stop_file.read_text())["rule"] == "by-hand"
    assert len(messages(caplog, "already exists with other content")) == 1
