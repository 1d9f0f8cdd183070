"""The decision loop end to end: a real trainer, the daemon's rules, the stop file, restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.store.store import Store
from tests.conftest import EXAMPLE, run_cli
from tests.daemon_harness import DaemonProcess, make_config, metric_value, wait_for

pytestmark = pytest.mark.slow

# Stops at the second evaluation whatever the numbers: the test is about the plumbing.
RULES = [
    {
        "name": "second-look",
        "kind": "threshold",
        "metric": "probe_accuracy",
        "mode": "max",
        "stopping_threshold": 0.0,
        "min_evaluations": 2,
    }
]


def test_trainer_stops_when_the_rules_fire_and_the_stop_survives_a_restart(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    marker = tmp_path / "on_stop.json"
    config = make_config(
        tmp_path / "monitor",
        {"digits": run_dir},
        stop={
            "on_stop": [
                sys.executable,
                "-c",
                f"import sys; open({str(marker)!r}, 'w').write(sys.stdin.read())",
            ],
        },
    )
    config.write_text(
        config.read_text() + "rules:\n" + "".join(f"- {json.dumps(rule)}\n" for rule in RULES)
    )
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        trainer = subprocess.run(
            [sys.executable, str(EXAMPLE / "train.py"), "--epochs", "40", "--out", str(run_dir),
             "--epoch-pause", "1.0"],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        assert "stop file" in trainer.stdout, trainer.stdout
        epochs_run = len(list(run_dir.glob("step_*.pt")))
        assert 2 <= epochs_run < 40
        stop = json.loads((run_dir / "STOP").read_text())
        assert stop["run"] == "digits" and stop["rule"] == "second-look"
        assert stop["step"] == 76 and stop["checkpoint"].endswith("step_76.pt")
        assert stop["metric"] == "probe_accuracy" and stop["value"] is not None
        assert json.loads(marker.read_text())["step"] == 76
        exposition = daemon.scrape()
        assert metric_value(exposition, "stiffness_early_stop", run="digits") == 1
    finally:
        assert daemon.stop() == 0
    assert "early stop for run digits at step 76" in daemon.log
    with Store(config.parent / "state" / "state.db", readonly=True) as store:
        raised = store.stop_for("digits")
        assert raised is not None and raised.rule == "second-look"
        assert store.decisions("digits")
    (run_dir / "STOP").unlink()  # the operator lets the run go on
    again = DaemonProcess(config)
    try:
        wait_for(lambda: metric_value(again.scrape(), "stiffness_early_stop", run="digits") == 1,
                 what="the stop restored from the store")  # fmt: skip
    finally:
        assert again.stop() == 0
    assert not (run_dir / "STOP").exists()  # never rewritten behind the operator's back
    assert "was stopped earlier by rule second-look (stop file removed)" in again.log


def test_backtest_replays_stored_history(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--epochs", "4", "--out", str(run_dir)],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: metric_value(daemon.scrape(), "stiffness_checkpoints_evaluated_total",
                                      run="digits") == 4, what="four evaluations")  # fmt: skip
    finally:
        assert daemon.stop() == 0
    rules = tmp_path / "second-look.yaml"
    rules.write_text(json.dumps({"description": "test", "rules": RULES}))
    done = run_cli("backtest", "-c", config, "--rules", rules, "--json")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert result["run"] == "digits" and result["rules"] == str(rules)
    assert result["stop_step"] == 76 and result["stop_checkpoint"].endswith("step_76.pt")
    assert result["evaluations"] == 4 and result["evaluations_saved"] == 2
    assert result["reason"]
    never = tmp_path / "never.yaml"
    never.write_text(
        "description: never\nrules:\n  - {kind: threshold, metric: probe_loss, mode: min, "
        "divergence_threshold: 1.0e9}\n"
    )
    [quiet] = json.loads(run_cli("backtest", "-c", config, "--rules", never, "--json").stdout)
    assert quiet["stop_step"] is None and quiet["evaluations"] == 4
    readable = run_cli("backtest", "-c", config, "--rules", rules)
    assert "would have stopped at step 76" in readable.stdout
    assert run_cli("backtest", "-c", config, "--rules", tmp_path / "nope.yaml").returncode == 2
    (config.parent / "state" / "state.db").rename(tmp_path / "moved.db")
    missing = run_cli("backtest", "-c", config)
    assert missing.returncode == 1 and "no store" in missing.stderr
