"""Bad input counted once (issue 19, item 6): a corrupt checkpoint is not read, logged and
counted again at every restart, and a writer that pauses mid-file is not a corrupt file."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_errors,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow


def test_a_known_corrupt_checkpoint_is_not_counted_again_after_a_restart(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    (run_dir / "step_1.pt").write_bytes(os.urandom(4096))
    write_checkpoint(run_dir / "step_2.pt", 2)
    first = DaemonProcess(config)
    try:
        wait_for(lambda: len(stored_errors(config)) == 1, what="the corrupt checkpoint's error")
        wait_for(lambda: len(stored_evaluations(config)) == 1, what="the good checkpoint")
    finally:
        assert first.stop() == 0
    assert [e.reason for e in stored_errors(config)] == ["corrupt"]

    second = DaemonProcess(config)
    try:
        write_checkpoint(run_dir / "step_3.pt", 3)  # queued after the old ones
        wait_for(lambda: len(stored_evaluations(config)) == 2, what="the new checkpoint")
        time.sleep(2.0)  # longer than corrupt_after: a re-read failure would be recorded by now
        assert len(stored_errors(config)) == 1, "the restart counted the old corrupt file again"
        assert "checkpoint not evaluated" not in second.log
        exposition = second.scrape()  # counters start at 0 in a new process; none was counted
        assert not metric_value(exposition, "stiffness_checkpoint_errors_total",
                                run="digits", reason="corrupt")  # fmt: skip
    finally:
        assert second.stop() == 0


def test_a_writer_that_pauses_mid_file_is_not_counted_corrupt(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = make_config(tmp_path / "monitor", {"digits": run_dir}, watch={"corrupt_after": 6.0})
    write_checkpoint(tmp_path / "whole.pt", 5)
    payload = (tmp_path / "whole.pt").read_bytes()
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        target = run_dir / "step_5.pt"
        third = len(payload) // 3

        def slow_writer() -> None:
            with target.open("wb") as handle:  # written in place, no temporary file
                for part in range(3):
                    handle.write(payload[part * third : (part + 1) * third if part < 2 else None])
                    handle.flush()
                    os.fsync(handle.fileno())
                    if part < 2:
                        time.sleep(1.5)  # longer than settle_seconds (0.3)

        writer = threading.Thread(target=slow_writer)
        writer.start()
        writer.join(60)
        wait_for(lambda: stored_evaluations(config), what="the finished checkpoint's evaluation")
        time.sleep(7.0)  # past corrupt_after: a held-back failure would be recorded by now
        assert stored_errors(config) == []
        assert torch.load(io.BytesIO(target.read_bytes()), weights_only=True)["global_step"] == 5
    finally:
        assert daemon.stop() == 0
