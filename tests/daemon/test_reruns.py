"""A rerun into the same folder, end to end (issue 14): a real daemon, real checkpoints, the
real CLI. The rerun is a new attempt with its own stop and best checkpoint, the earlier
attempt's stop file is removed, ``reset`` starts an attempt by hand, and ``backtest`` shows
the latest attempt unless told otherwise."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow

# Stops at an attempt's second evaluation whatever the numbers: the test is about attempts.
RULES = (
    "rules:\n- {name: second-look, kind: threshold, metric: probe_accuracy, mode: max,"
    " stopping_threshold: 0.0, min_evaluations: 2}\n"
)


def read(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_a_rerun_is_a_new_attempt_with_its_own_stop_and_best(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    config.write_text(config.read_text() + RULES)
    stop_file, best_file = run_dir / "STOP", run_dir / "best_checkpoint.json"
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        for step in (10, 20):
            write_checkpoint(run_dir / f"step_{step}.pt", step)
        wait_for(stop_file.exists, what="attempt 1's stop")
        first = read(stop_file)
        assert (first["attempt"], first["step"]) == (1, 20)
        best = first["best_checkpoint"]
        assert isinstance(best, dict) and best["metric"] == "probe_accuracy"
        assert best["path"] in {str(run_dir / "step_10.pt"), str(run_dir / "step_20.pt")}
        assert read(best_file)["path"] == best["path"] and read(best_file)["attempt"] == 1
        scraped = daemon.scrape()
        assert metric_value(scraped, "stiffness_attempt", run="digits") == 1
        assert metric_value(scraped, "stiffness_best_checkpoint_step", run="digits") == best["step"]

        # The rerun: training starts again at a lower step, written after the old ones.
        time.sleep(0.05)
        write_checkpoint(run_dir / "step_5.pt", 5, seed=105)
        wait_for(lambda: "attempt 2 begins (the step went back from 20 to 5)" in daemon.log,
                 what="attempt 2")  # fmt: skip
        wait_for(lambda: metric_value(daemon.scrape(), "stiffness_attempt", run="digits") == 2,
                 what="the attempt gauge")  # fmt: skip
        assert not stop_file.exists()  # attempt 1's stop must not end the rerun
        wait_for(
            lambda: (
                metric_value(daemon.scrape(), "stiffness_best_checkpoint_step", run="digits") == 5
            ),
            what="the rerun's best checkpoint",
        )
        assert metric_value(daemon.scrape(), "stiffness_early_stop", run="digits") == 0
        assert read(best_file) | {"time": None} == {
            "version": 1, "run": "digits", "attempt": 2, "metric": "probe_accuracy",
            "mode": "max", "step": 5, "value": read(best_file)["value"],
            "path": str(run_dir / "step_5.pt"), "time": None,
        }  # fmt: skip
        write_checkpoint(run_dir / "step_15.pt", 15, seed=115)
        wait_for(stop_file.exists, what="attempt 2's stop")
        second = read(stop_file)
        assert (second["attempt"], second["step"]) == (2, 15)

        # backtest: the latest attempt by default, any other on request, a wrong one exit 2.
        latest = json.loads(run_cli("backtest", "-c", str(config), "--json").stdout)
        assert [(b["attempt"], b["attempts"], b["stop_step"]) for b in latest] == [(2, 2, 15)]
        earlier = json.loads(
            run_cli("backtest", "-c", str(config), "--json", "--attempt", "1").stdout
        )
        assert earlier[0]["stop_step"] == 20 and earlier[0]["best_checkpoint"] == best
        missing = run_cli("backtest", "-c", str(config), "--attempt", "3")
        assert missing.returncode == 2
        assert "--attempt 3: run digits has attempts 1 to 2" in missing.stderr

        # reset by hand, while the daemon runs.
        done = run_cli("reset", "-c", str(config), "--run", "digits")
        assert done.returncode == 0, done.stderr
        assert "run digits: attempt 3 begins" in done.stdout
        wait_for(lambda: "attempt 3 begins (reset by hand)" in daemon.log, what="the reset")
        assert not stop_file.exists() and not best_file.exists()
        assert metric_value(daemon.scrape(), "stiffness_early_stop", run="digits") == 0
        unknown = run_cli("reset", "-c", str(config), "--run", "nope")
        assert unknown.returncode == 2 and "--run nope: no such run" in unknown.stderr
    finally:
        assert daemon.stop() == 0, daemon.log

    # A restart stays in attempt 3 and writes no earlier attempt's stop back.
    restarted = DaemonProcess(config)
    try:
        wait_for(lambda: metric_value(restarted.scrape(), "stiffness_attempt", run="digits") == 3,
                 what="attempt 3 after a restart")  # fmt: skip
        assert not stop_file.exists()
    finally:
        assert restarted.stop() == 0, restarted.log
    assert os.path.exists(run_dir / "step_15.pt")
