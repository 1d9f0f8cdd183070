"""TensorBoard end to end: a real ``watch`` subprocess over real checkpoints, its events read
back with TensorBoard's own ``EventAccumulator`` and compared with what its store holds.

What is checked: every tag at every checkpoint's step equals the stored evaluation, verdicts
and stop; a restart adds no duplicate points; ``tensorboard.enabled: false`` writes nothing,
and turning it on later writes the stored history once; a symlink planted where the folder
should be is one log line and a count per evaluation, the daemon goes on, and once the link is
gone the next evaluation writes everything that was missed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monitor.store.store import Store
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow

# Stops at the second evaluation whatever the numbers: the verdicts change between steps.
RULES = [
    {"name": "second-look", "kind": "threshold", "metric": "probe_accuracy", "mode": "max",
     "stopping_threshold": 0.0, "min_evaluations": 2},
    {"name": "diverged", "kind": "non_finite"},
]  # fmt: skip
#: The example's held-out digits, half of them marked as a training split: pair sets
#: ``train-val`` and ``train-train`` appear beside ``val-val``.
SPLIT_PROBE = """
import torch
from digits_data import probe as digits_probe

def probe(seed: int = 0):
    inputs, targets = digits_probe(seed)
    split = ["train" if i % 2 else "val" for i in range(len(targets))]
    return inputs, targets, split
"""
SUMMARIES = {
    "within": "within_class",
    "between": "between_class",
    "within_pooled": "within_class_pooled",
    "between_pooled": "between_class_pooled",
}


def configure(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir}, **sections)
    (config.parent / "split_probe.py").write_text(SPLIT_PROBE)
    text = config.read_text().replace("digits_data:probe", "split_probe:probe")
    config.write_text(text + "rules:\n" + "".join(f"- {json.dumps(r)}\n" for r in RULES))
    return config, run_dir


def evaluate_all(config: Path, count: int) -> DaemonProcess:
    """Start the daemon and wait until ``count`` evaluations are stored and judged."""
    daemon = DaemonProcess(config)
    wait_for(lambda: "watching 1 run(s)" in daemon.log, what="the daemon to start watching")
    wait_for(lambda: len(stored_evaluations(config)) >= count and judged(config) >= count,
             timeout=120, what=f"{count} judged evaluations")  # fmt: skip
    return daemon


def judged(config: Path) -> int:
    with Store(config.parent / "state" / "state.db", readonly=True) as store:
        return len({decision.evaluation_id for decision in store.decisions("digits")})


def board(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def series(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def f32(value: float) -> float:
    return float(np.float32(value))


def assert_board_holds_the_store(folder: Path, config: Path) -> None:
    """Every stored evaluation, its verdicts and the stop, once each, at its step."""
    events = board(folder)
    with Store(config.parent / "state" / "state.db", readonly=True) as store:
        stored = store.evaluations("digits")
        stop = store.stop_for("digits")
        decisions = store.decisions("digits")
    assert stop is not None
    steps = [evaluation.step for evaluation in stored]
    expected: dict[str, list[tuple[int, float]]] = {}
    for evaluation in stored:
        assert evaluation.step is not None
        result = evaluation.result
        sets = {"val-val": result, **result["pair_sets"]}
        assert set(sets) == {"val-val", "train-val", "train-train"}
        for pair_set, node in sets.items():
            for key, name in SUMMARIES.items():
                value = node["cosine"][key]
                tag = f"stiffness/{pair_set}/{name}"
                expected.setdefault(tag, []).append((evaluation.step, f32(value)))
        for key, tag in (("probe_loss", "probe/loss"), ("probe_accuracy", "probe/accuracy"),
                         ("train_probe_loss", "probe/train_loss"),
                         ("train_probe_accuracy", "probe/train_accuracy")):  # fmt: skip
            expected.setdefault(tag, []).append((evaluation.step, f32(result[key])))
        for decision in (d for d in decisions if d.evaluation_id == evaluation.id):
            expected.setdefault(f"rules/{decision.rule}", []).append(
                (evaluation.step, float(decision.stop))
            )
        raised = float(evaluation.id >= stop.evaluation_id)
        expected.setdefault("stop/raised", []).append((evaluation.step, raised))
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        assert series(events, tag) == points, tag
    assert [p for _, p in expected["rules/second-look"]] == [0.0] + [1.0] * (len(stored) - 1)
    assert [p for _, p in expected["stop/raised"]] == [0.0] + [1.0] * (len(stored) - 1)
    [reason] = events.Tensors("stop/reason/text_summary")
    assert reason.step == steps[1]
    assert reason.tensor_proto.string_val == [f"rule second-look: {stop.reason}".encode()]
    for pair_set in ("val-val", "train-val", "train-train"):
        images = events.Images(f"class_matrix/{pair_set}")
        assert [image.step for image in images] == steps
        assert all(image.width == image.height == 250 for image in images)  # 10 classes


def served_scalars(logdir: Path, tag: str, want: int) -> tuple[list[str], list[list[float]]]:
    """The runs a real ``tensorboard --logdir`` finds, and one tag's points once it holds
    ``want`` of them: what a user sees who points TensorBoard at the run folder."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0",
         "--host", "127.0.0.1", "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = ""
        for line in server.stdout:  # "TensorBoard 2.x at http://127.0.0.1:PORT/ (Press ..."
            if match := re.search(r"at (http://\S+/) ", line):
                url = match.group(1)
                break
        assert url, "tensorboard printed no URL"

        def get(path: str) -> Any:
            with urllib.request.urlopen(url + path, timeout=10) as response:
                return json.loads(response.read())

        query = urllib.parse.urlencode({"run": "stiffness-monitor", "tag": tag})
        points = wait_for(lambda: len(get(f"data/plugin/scalars/scalars?{query}")) == want
                          and get(f"data/plugin/scalars/scalars?{query}"),
                          what=f"{want} points of {tag} served")  # fmt: skip
        return get("data/runs"), points
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_each_evaluation_is_written_as_stored_and_a_restart_adds_no_duplicates(
    tmp_path: Path,
) -> None:
    config, run_dir = configure(tmp_path)
    for step in (10, 20):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    daemon = evaluate_all(config, 2)
    try:
        exposition = daemon.scrape()
        assert metric_value(exposition, "stiffness_tensorboard_write_failures_total",
                            run="digits") == 0  # fmt: skip
    finally:
        assert daemon.stop() == 0
    folder = run_dir / "stiffness-monitor"
    assert_board_holds_the_store(folder, config)
    write_checkpoint(run_dir / "step_30.pt", 30)
    again = evaluate_all(config, 3)
    assert again.stop() == 0
    assert_board_holds_the_store(folder, config)  # 10 and 20 once each, 30 added
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one file per daemon
    assert "tensorboard" not in again.log  # nothing to write at start-up, nothing failed
    runs, points = served_scalars(run_dir, "stop/raised", 3)
    assert runs == ["stiffness-monitor"]
    assert [(step, value) for _, step, value in points] == [(10, 0.0), (20, 1.0), (30, 1.0)]


def test_off_by_config_writes_nothing_and_turning_it_on_writes_the_stored_history(
    tmp_path: Path,
) -> None:
    config, run_dir = configure(tmp_path, tensorboard={"enabled": False})
    for step in (10, 20):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    daemon = evaluate_all(config, 2)
    assert daemon.stop() == 0
    assert "stiffness-monitor" not in os.listdir(run_dir)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # nothing, anywhere
    moved = tmp_path / "boards" / "digits"
    config.write_text(config.read_text().replace(
        "enabled: false", f"enabled: true\n  dir: {tmp_path}/boards/{{run}}"))  # fmt: skip
    again = evaluate_all(config, 2)
    assert again.stop() == 0
    assert "wrote 2 stored evaluation(s) of run digits" in again.log
    assert not (run_dir / "stiffness-monitor").exists()
    assert_board_holds_the_store(moved, config)


def test_a_planted_symlink_is_logged_once_counted_and_the_daemon_goes_on(tmp_path: Path) -> None:
    config, run_dir = configure(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir.mkdir()
    folder = run_dir / "stiffness-monitor"
    folder.symlink_to(elsewhere, target_is_directory=True)
    for step in (10, 20):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    daemon = DaemonProcess(config)
    try:
        failures = "stiffness_tensorboard_write_failures_total"
        wait_for(lambda: metric_value(daemon.scrape(), failures, run="digits") == 2,
                 what="two failed writes")  # fmt: skip
        assert len(stored_evaluations(config)) == 2  # stored all the same
        assert daemon.log.count("events of run digits not written") == 1
        assert "expected a folder, got a symlink" in daemon.log
        assert list(elsewhere.iterdir()) == []
        folder.unlink()  # the operator removes the link: the next evaluation writes all
        write_checkpoint(run_dir / "step_30.pt", 30)
        wait_for(lambda: "writing run digits to" in daemon.log, what="the recovery log line")
        assert metric_value(daemon.scrape(), failures, run="digits") == 2
    finally:
        assert daemon.stop() == 0
    assert "wrote 3 stored evaluation(s) of run digits" in daemon.log
    assert "Traceback" not in daemon.log
    assert_board_holds_the_store(folder, config)


def test_a_rerun_into_the_same_folder_is_a_tensorboard_run_of_its_own(tmp_path: Path) -> None:
    config, run_dir = configure(tmp_path)
    for step in (10, 20):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    daemon = evaluate_all(config, 2)
    try:
        write_checkpoint(run_dir / "rerun" / "step_5.pt", 5, seed=99)  # the step goes back
        wait_for(lambda: judged(config) >= 3, what="the rerun's first evaluation judged")
        wait_for(lambda: (run_dir / "stiffness-monitor" / "attempt-2").is_dir(),
                 what="the second attempt's folder")  # fmt: skip
    finally:
        assert daemon.stop() == 0
    assert "attempt 2 begins" in daemon.log
    folder = run_dir / "stiffness-monitor"
    assert series(board(folder), "stop/raised") == [(10, 0.0), (20, 1.0)]
    rerun = board(folder / "attempt-2")
    assert series(rerun, "stop/raised") == [(5, 0.0)]  # a fresh attempt: no stop yet
    [stored] = [e for e in stored_evaluations(config) if e.step == 5]
    assert stored.attempt == 2
    within = stored.result["cosine"]["within"]
    assert series(rerun, "stiffness/val-val/within_class") == [(5, f32(within))]
