"""The daemon end to end on a language-model run (issue 16, item 4).

A tiny Llama-style causal LM is trained by a real Hugging Face ``Trainer``
(examples/language/train.py) that writes ``checkpoint-N`` folders (safetensors weights,
optimizer, ``trainer_state.json``) while ``stiffness-monitor watch`` watches the run with
``stiffness.loss: causal_lm`` on a sequence probe. Every checkpoint is evaluated once, with
its step from ``trainer_state.json``; the metrics, the store, the rule's stop file (and the
trainer's ``StiffnessStopCallback`` reading it), ``backtest`` and ``report`` all agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.daemon_harness import DaemonProcess, metric_value, stored_evaluations, wait_for

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

EXAMPLE = REPO / "examples" / "language"
STEPS, SAVE_STEPS = 200, 40


def write_config(folder: Path) -> tuple[Path, float]:
    """The example's config, files and probe in ``folder``, with test timings; and the
    token-accuracy goal its rule stops at."""
    for name in ("model.py", "train.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    subprocess.run(
        [sys.executable, "train.py", "--write-probe", "probe.pt"], cwd=folder, check=True,
        timeout=120,
    )  # fmt: skip
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config["stiffness"]["device"] = "cpu"
    config["watch"].update(settle_seconds=0.3, poll_interval=0.2, rescan_interval=2)
    config["metrics"] = {"port": 0}
    config["store"] = {"path": "state/state.db"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    [rule] = config["rules"]
    assert rule["metric"] == "probe_accuracy" and rule["mode"] == "max"
    return path, float(rule["stopping_threshold"])


def test_daemon_watches_a_hugging_face_trainer_run(tmp_path: Path) -> None:
    config, goal = write_config(tmp_path)
    assert run_cli("check", "-c", config).returncode == 0
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: threads cost more
        trainer = subprocess.run(
            [sys.executable, "train.py", "--out", "run", "--steps", str(STEPS),
             "--save-steps", str(SAVE_STEPS), "--save-pause", "3"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, check=True, env=env,
        )  # fmt: skip
        outcome = json.loads(trainer.stdout.strip().splitlines()[-1])
        folders = sorted(tmp_path.glob("run/checkpoint-*"), key=lambda p: int(p.name[11:]))
        steps = [int(folder.name.removeprefix("checkpoint-")) for folder in folders]
        assert steps and steps == list(range(SAVE_STEPS, SAVE_STEPS * len(steps) + 1, SAVE_STEPS))
        evaluations = wait_for(
            lambda: (found := stored_evaluations(config)) and len(found) == len(steps) and found,
            timeout=300,
            what=f"{len(steps)} evaluations",
        )
        exposition = daemon.scrape()
    finally:
        assert daemon.stop() == 0, daemon.log[-3000:]

    # Every checkpoint folder once, its step from trainer_state.json, the optimizer's and
    # scheduler's *.pt files inside it never taken for checkpoints of their own.
    evaluations = sorted(evaluations, key=lambda e: e.step)
    assert [e.step for e in evaluations] == steps
    assert {e.step_source for e in evaluations} == {"payload"}
    assert {e.format for e in evaluations} == {"hf"}
    assert "checkpoint_errors_total" not in daemon.log
    for e in evaluations:
        result = e.result
        assert result["counts"]["examples"] == 60 and result["counts"]["zero_gradient"] == 0
        assert e.within_class is not None and -1 <= e.within_class <= 1
    first, last = evaluations[0], evaluations[-1]
    assert last.probe_loss is not None and first.probe_loss is not None
    assert last.probe_loss < first.probe_loss  # it learned

    # The rule fired at the first evaluation whose token accuracy reached the goal.
    reached = [e for e in evaluations if (e.probe_accuracy or 0.0) >= goal]
    assert reached, [e.probe_accuracy for e in evaluations]
    stop = json.loads((tmp_path / "run" / "STOP").read_text())
    assert stop["rule"] == "token-accuracy-goal" and stop["step"] == reached[0].step
    if outcome["stopped_at_step"] is not None:  # the trainer saw the file before it finished
        assert stop["step"] <= outcome["stopped_at_step"] == outcome["global_step"] < STEPS

    labels = {"run": "tiny-llama"}
    assert metric_value(exposition, "stiffness_checkpoints_evaluated_total", **labels) == len(steps)
    assert metric_value(exposition, "stiffness_checkpoint_step", **labels) == steps[-1]
    assert metric_value(exposition, "stiffness_within_class", **labels) == pytest.approx(
        last.within_class
    )
    assert metric_value(exposition, "stiffness_probe_loss", **labels) == pytest.approx(
        last.probe_loss
    )
    assert metric_value(exposition, "stiffness_early_stop", **labels) == 1

    backtest = run_cli("backtest", "-c", config, "--json")
    assert backtest.returncode == 0, backtest.stderr
    [replayed] = json.loads(backtest.stdout)
    assert replayed["stop_step"] == stop["step"] and replayed["evaluations"] == len(steps)

    report = run_cli("report", "-c", config, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "index.html").is_file()
    assert list((tmp_path / "report").glob("*.png"))
