"""The daemon end to end: a real ``watch`` subprocess, real checkpoints, signals and scrapes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_errors,
    stored_evaluations,
    stored_skips,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow


def evaluated_steps(config: Path, run: str | None = None) -> list[int | None]:
    return [row.step for row in stored_evaluations(config) if run is None or row.run == run]


_EVALUATED = re.compile(r" monitor\.daemon: evaluated run=\S+ step=(\S+)")
_IDLE = re.compile(r" monitor\.daemon: idle evaluated=(\d+) queue=0$")


def evaluated_by(daemon: DaemonProcess) -> list[int | None]:
    """The steps this daemon process evaluated itself, from its own log, in order.

    The store cannot tell: it keeps one row per checkpoint however often one is evaluated.
    """
    steps = [match.group(1) for match in map(_EVALUATED.search, daemon.log.splitlines()) if match]
    return [None if step == "None" else int(step) for step in steps]


def wait_until_idle(daemon: DaemonProcess) -> int:
    """Wait for a heartbeat with an empty queue after the last evaluation (so nothing queued is
    left to evaluate); returns the number of evaluations that heartbeat reports."""

    def idle() -> int | None:
        lines = daemon.log.splitlines()
        last = max((i for i, line in enumerate(lines) if _EVALUATED.search(line)), default=-1)
        beats = [match for line in lines[last + 1 :] if (match := _IDLE.search(line))]
        return int(beats[-1].group(1)) if beats else None

    found: tuple[int] = wait_for(
        lambda: (count := idle()) is not None and (count,), what="an idle heartbeat"
    )
    return found[0]


def test_evaluates_a_live_trainer_in_step_order_and_stops_on_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    daemon = DaemonProcess(config)
    try:
        trainer = subprocess.run(
            [sys.executable, str(EXAMPLE / "train.py"), "--epochs", "3", "--out", str(run_dir)],
            capture_output=True,
            timeout=300,
            check=True,
        )
        assert trainer.returncode == 0
        steps = wait_for(
            lambda: len(evaluated_steps(config)) == 3 and evaluated_steps(config),
            what="three evaluations",
        )
        assert steps == [38, 76, 114]
        # Stored first, exported right after: wait for the scrape to catch up.
        exposition = wait_for(
            lambda: (
                (text := daemon.scrape())
                and metric_value(text, "stiffness_checkpoints_evaluated_total", run="digits") == 3
                and text
            ),
            what="the third evaluation in the metrics",
        )
        # The gauge shows the latest evaluation. That is step 114 unless, on a loaded machine,
        # 114 was complete before 76 had settled (the queue orders what it holds, not what the
        # watcher has yet to hand over).
        latest = max(stored_evaluations(config), key=lambda row: row.id)
        assert metric_value(exposition, "stiffness_checkpoint_step", run="digits") == latest.step
        assert metric_value(exposition, "stiffness_queue_depth", run="digits") == 0
        within = metric_value(exposition, "stiffness_within_class", run="digits")
        assert within is not None and -1 <= within <= 1
        # SIGTERM ends it on its own (stop() raises beyond the bound, generous for a loaded
        # machine; an evaluation in flight is abandoned, not waited for).
        assert daemon.stop(timeout=60) == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    assert "evaluated" in daemon.log and "step=114" in daemon.log
    assert "Traceback" not in daemon.log


def test_existing_checkpoints_are_queued_in_step_order(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (300, 100, 200):  # written out of order
        write_checkpoint(run_dir / f"ckpt-step_{step}.pt", step)
        time.sleep(0.05)
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: len(evaluated_steps(config)) == 3, what="three evaluations")
        order = [row.step for row in sorted(stored_evaluations(config), key=lambda r: r.id)]
        assert order == [100, 200, 300]
    finally:
        assert daemon.stop() == 0


def test_bad_checkpoints_are_counted_and_the_daemon_carries_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    daemon = DaemonProcess(config)
    try:
        good = write_checkpoint(run_dir / "step_1.pt", 1)
        truncated = run_dir / "step_2.pt"
        truncated.write_bytes(good.read_bytes()[:500])
        write_checkpoint(run_dir / "step_3.pt", 3, hidden=32)  # another architecture
        (run_dir / "step_4.pt").write_bytes(os.urandom(4096))
        write_checkpoint(run_dir / "step_5.pt", 5)
        wait_for(lambda: len(evaluated_steps(config)) == 2, what="the two good checkpoints")
        wait_for(lambda: len(stored_errors(config)) == 3, what="three recorded errors")
        exposition = daemon.scrape()
        errors = {
            reason: metric_value(
                exposition, "stiffness_checkpoint_errors_total", run="a", reason=reason
            )
            for reason in ("corrupt", "mismatch")
        }
        assert errors == {"corrupt": 2, "mismatch": 1}
        assert evaluated_steps(config) == [1, 5]
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log
    assert "step_3.pt" in daemon.log and "mismatch" in daemon.log


def test_restart_never_evaluates_twice(tmp_path: Path) -> None:
    """What the restarted daemon evaluates itself: only what no earlier run stored."""
    run_dir = tmp_path / "run"
    for step in range(1, 5):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    config = make_config(tmp_path / "monitor", {"a": run_dir}, watch={"heartbeat_interval": 0.5})
    first = DaemonProcess(config)
    try:
        wait_for(lambda: len(evaluated_steps(config)) >= 2, what="two evaluations")
    finally:
        assert first.stop() == 0
    stored = set(evaluated_steps(config))  # some or all of 1-4: SIGTERM may come mid-queue
    assert set(evaluated_by(first)) == stored
    write_checkpoint(run_dir / "step_5.pt", 5)
    second = DaemonProcess(config)
    try:
        wait_for(lambda: len(evaluated_steps(config)) == 5, what="five evaluations")
        reported = wait_until_idle(second)  # everything it was handed is dealt with
        exposition = second.scrape()
    finally:
        assert second.stop() == 0
    new = sorted({1, 2, 3, 4, 5} - stored)
    assert evaluated_by(second) == new
    assert reported == len(new)
    assert metric_value(exposition, "stiffness_checkpoints_evaluated_total", run="a") == len(new)
    assert evaluated_steps(config) == [1, 2, 3, 4, 5]


def test_two_runs_at_once_with_the_polling_observer(tmp_path: Path) -> None:
    runs = {"left": tmp_path / "left", "right": tmp_path / "right"}
    config = make_config(tmp_path / "monitor", runs, watch={"observer": "polling"})
    daemon = DaemonProcess(config)
    try:
        for step in (1, 2, 3):
            for path in runs.values():
                write_checkpoint(path / f"step_{step}.pt", step, seed=step + len(path.name))
        wait_for(lambda: len(evaluated_steps(config)) == 6, what="six evaluations")
        assert evaluated_steps(config, "left") == [1, 2, 3]
        assert evaluated_steps(config, "right") == [1, 2, 3]
    finally:
        assert daemon.stop() == 0
    assert "polling" in daemon.log


def test_burst_of_50_checkpoints_each_evaluated_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()  # started and watching
        for step in range(1, 51):
            write_checkpoint(run_dir / f"step_{step}.pt", step)
        wait_for(lambda: len(evaluated_steps(config)) == 50, timeout=180, what="50 evaluations")
        assert evaluated_steps(config) == list(range(1, 51))
    finally:
        assert daemon.stop() == 0
    assert evaluated_by(daemon) == list(range(1, 51))  # once each, not hidden by the store


def test_backlog_latest_skips_to_the_newest(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in range(1, 6):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    config = make_config(tmp_path / "monitor", {"a": run_dir}, watch={"backlog": "latest"})
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: evaluated_steps(config) == [5], what="the newest checkpoint")
        wait_for(lambda: len(stored_skips(config)) == 4, what="four recorded skips")
        assert sorted(skip.step for skip in stored_skips(config)) == [1, 2, 3, 4]
    finally:
        assert daemon.stop() == 0


def test_sighup_reloads_rules_heartbeat_and_json_logs(tmp_path: Path) -> None:
    """Broken rules on SIGHUP: tests/faults/test_daemon_faults.py."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = make_config(
        tmp_path / "monitor",
        {"a": run_dir},
        logging={"format": "json"},
        watch={"heartbeat_interval": 0.5},
    )
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "rules reloaded" in daemon.log, what="the reload line")
        wait_for(lambda: '"message": "idle"' in daemon.log, what="an idle heartbeat")
    finally:
        assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log.splitlines() if line.startswith("{")]
    assert records, daemon.log
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("rules reloaded") for r in records)


def test_a_file_deleted_while_queued_is_skipped_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"a": run_dir}, watch={"settle_seconds": 0.5})
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        doomed = write_checkpoint(run_dir / "step_1.pt", 1)
        doomed.unlink()
        write_checkpoint(run_dir / "step_2.pt", 2)
        wait_for(lambda: evaluated_steps(config) == [2], what="the surviving checkpoint")
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log
