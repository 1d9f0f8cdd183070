"""The stop signal (issue 19, item 3): a stop raised but not written is kept pending in the
store and written on a later turn of the loop or at start-up, never lost, and never mistaken
for an operator's removal."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.stopping.stop_file import StopSignal
from monitor.store.store import Store, StoredStop
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow

# Stops at the second evaluation whatever the numbers: the tests are about the stop file.
RULES = '- {"name": "second-look", "kind": "threshold", "metric": "probe_accuracy", "mode": "max",'
RULES += ' "stopping_threshold": 0.0, "min_evaluations": 2}\n'
NOT_WRITTEN = "stop file not written"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs filled to the last byte (needs root with CAP_SYS_ADMIN; else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tool = shutil.which("mount")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        [tool, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        with open(mount / "filler", "wb") as handle:
            try:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def config_with(tmp_path: Path, run_dir: Path, stop: dict[str, Any]) -> Path:
    """A daemon config whose rules stop the run at its second evaluation."""
    config = make_config(tmp_path / "monitor", {"digits": run_dir}, stop=stop)
    config.write_text(config.read_text() + "rules:\n" + RULES)
    return config


def on_stop_appending_to(marker: Path) -> list[str]:
    """An on_stop command that notes whether the stop file existed when it ran."""
    code = (
        "import os; open(" + repr(str(marker)) + ", 'a')"
        ".write(str(os.path.exists(os.environ['STIFFNESS_STOP_FILE'])) + '\\n')"
    )
    return [sys.executable, "-c", code]


def stored_stop(config: Path) -> StoredStop | None:
    with Store(config.parent / "state" / "state.db", readonly=True) as store:
        return store.stop_for("digits")


def pending(daemon: DaemonProcess) -> float | None:
    return metric_value(daemon.scrape(), "stiffness_stop_pending", run="digits")


def raise_the_stop(daemon: DaemonProcess, run_dir: Path) -> None:
    """Two real checkpoints: the rules stop the run at the second."""
    daemon.metrics_url()
    for step in (1, 2):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    wait_for(lambda: "early stop for run digits at step 2" in daemon.log, timeout=120,
             what="the stop raised")  # fmt: skip


def test_a_stop_file_on_a_full_disk_stays_pending_and_is_written_when_space_returns(
    tmp_path: Path, full_disk: Path
) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "on_stop.log"
    stop_file = full_disk / "digits.STOP"
    config = config_with(tmp_path, run_dir, {"file": str(full_disk / "{run}.STOP"),
                                             "on_stop": on_stop_appending_to(marker)})  # fmt: skip
    daemon = DaemonProcess(config)
    try:
        raise_the_stop(daemon, run_dir)
        wait_for(lambda: NOT_WRITTEN in daemon.log, what="the failed write")
        assert "No space left on device" in daemon.log
        wait_for(lambda: pending(daemon) == 1, what="stiffness_stop_pending 1")
        assert metric_value(daemon.scrape(), "stiffness_early_stop", run="digits") == 1
        raised = stored_stop(config)
        assert raised is not None and raised.pending
        time.sleep(2)  # several loop turns, each retrying
        assert not stop_file.exists() and not marker.exists()  # on_stop waits for the file
        (full_disk / "filler").unlink()  # space returns; no new checkpoint comes
        wait_for(stop_file.exists, what="the stop file written on a later turn")
        wait_for(lambda: pending(daemon) == 0, what="stiffness_stop_pending 0")
        wait_for(marker.exists, what="on_stop after the stop file")
        written = json.loads(stop_file.read_text())
        assert (written["run"], written["rule"], written["step"]) == ("digits", "second-look", 2)
        assert len(stored_evaluations(config)) == 2
        errors = metric_value(daemon.scrape(), "stiffness_checkpoint_errors_total",
                              run="digits", reason="stop-file")  # fmt: skip
        assert errors == 1
    finally:
        assert daemon.stop() == 0
    assert daemon.log.count(NOT_WRITTEN) == 1  # one line per state change, not per retry
    assert daemon.log.count("no longer pending") == 1
    assert marker.read_text() == "True\n"
    done = stored_stop(config)
    assert done is not None and not done.pending


def test_a_pending_stop_survives_a_restart_and_is_written_once_its_folder_is_fixed(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    blocker = run_dir / "signals"  # a file where the stop file's folder must go
    blocker.write_text("not a folder")
    stop_file = blocker / "STOP"
    config = config_with(tmp_path, run_dir, {"file": "{run_dir}/signals/STOP"})
    first = DaemonProcess(config)
    try:
        raise_the_stop(first, run_dir)
        wait_for(lambda: NOT_WRITTEN in first.log, what="the failed write")
        wait_for(lambda: pending(first) == 1, what="stiffness_stop_pending 1")
    finally:
        assert first.stop() == 0
    raised = stored_stop(config)
    assert raised is not None and raised.pending
    again = DaemonProcess(config)  # restarted, the folder still broken
    try:
        wait_for(lambda: pending(again) == 1, what="the pending stop restored")
        assert "was stopped earlier by rule second-look (stop file pending" in again.log
        assert "(stop file removed)" not in again.log
        blocker.unlink()  # the operator fixes the folder; no new checkpoint comes
        wait_for(stop_file.exists, what="the stop file written on a later turn")
        wait_for(lambda: pending(again) == 0, what="stiffness_stop_pending 0")
    finally:
        assert again.stop() == 0
    assert json.loads(stop_file.read_text())["step"] == 2
    assert again.log.count(NOT_WRITTEN) == 1 and again.log.count("no longer pending") == 1


def test_a_stop_committed_but_not_written_before_a_kill_is_written_at_start_up(
    tmp_path: Path,
) -> None:
    """What a ``kill -9`` between the commit and the write leaves: a pending stop, no file."""
    run_dir, marker = tmp_path / "run", tmp_path / "on_stop.log"
    run_dir.mkdir()
    config = config_with(tmp_path, run_dir, {"on_stop": on_stop_appending_to(marker)})
    signal = StopSignal("digits", str(run_dir / "step_2.pt"), 2, "second-look",
                        "probe_accuracy reached 0.0", "probe_accuracy", 0.5, 0.5)  # fmt: skip
    with Store(config.parent / "state" / "state.db") as store:  # as the killed daemon left it
        ids = [
            store.record_evaluation(
                "digits",
                path=str(run_dir / f"step_{step}.pt"),
                fingerprint=f"f{step}",
                size=1,
                mtime_ns=step,
                evaluation={"run": "digits", "step": step, "probe_accuracy": 0.5},
                duration_seconds=0.1,
            )
            for step in (1, 2)
        ]
        assert store.record_stop("digits", ids[1], signal.rule, signal.reason, signal.to_dict())
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: "watching 1 run(s)" in daemon.log, what="start-up")
        assert json.loads((run_dir / "STOP").read_text()) == signal.to_dict()
        log = daemon.log  # written at start-up, before the watchers start
        assert log.index("wrote stop file") < log.index("watching 1 run(s)")
        assert "(stop file pending" in log and "(stop file removed)" not in log
        assert pending(daemon) == 0
        wait_for(marker.exists, what="on_stop after the stop file")
    finally:
        assert daemon.stop() == 0
    (run_dir / "STOP").unlink()  # the operator lets the run go on
    again = DaemonProcess(config)
    try:
        wait_for(lambda: "watching 1 run(s)" in again.log, what="start-up")
        assert "was stopped earlier by rule second-look (stop file removed)" in again.log
        assert pending(again) == 0
    finally:
        assert again.stop() == 0
    assert not (run_dir / "STOP").exists()  # never rewritten behind the operator's back
    assert marker.read_text() == "True\n"  # on_stop ran once
