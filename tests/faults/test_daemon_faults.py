"""Attacks the daemon already held when issue 19 was filed, kept held (issue 19, item 10).

Each test drives a real ``watch`` subprocess (tests/daemon_harness.py) with real checkpoints,
files and signals: a symlink planted at the stop path, ``kill -9`` in the middle of a burst,
SIGHUP with broken rules. What a daemon evaluated is read from its own log, not the store:
the store keeps one row per checkpoint however often it was evaluated.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.store.store import Store
from tests.daemon.test_loop import evaluated_by, wait_until_idle
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow

# Stops at the second evaluation whatever the numbers: these tests are about the plumbing.
SECOND_LOOK = (
    '{"name": "second-look", "kind": "threshold", "metric": "probe_accuracy", "mode": "max", '
    '"stopping_threshold": 0.0, "min_evaluations": 2}'
)
PRECIOUS = "precious: not the daemon's to write\n"


def store_of(config: Path) -> Store:
    return Store(config.parent / "state" / "state.db", readonly=True)


def steps_stored(config: Path) -> list[int | None]:
    return [row.step for row in stored_evaluations(config)]


# -- a symlink planted at the stop path --------------------------------------------------------


@pytest.mark.parametrize("target", ["file", "dangling"])
def test_a_symlink_planted_at_the_stop_path_is_refused_and_its_target_untouched(
    tmp_path: Path, target: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    if target == "file":
        victim.write_text(PRECIOUS)
    link = run_dir / "STOP"  # the default stop.file, {run_dir}/STOP
    link.symlink_to(victim)
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    config.write_text(config.read_text() + f"rules:\n- {SECOND_LOOK}\n")
    refusal = f"refusing to write stop file {link}: it is a symlink (to {str(victim)!r})"
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        for step in (1, 2):  # the rule raises the stop at the second
            write_checkpoint(run_dir / f"step_{step}.pt", step)
        wait_for(lambda: f"stop file not written: {refusal}" in daemon.log, what="the refusal")
        write_checkpoint(run_dir / "step_3.pt", 3)  # more turns of the loop, more retries
        wait_for(lambda: steps_stored(config) == [1, 2, 3], what="the third evaluation")
        exposition = daemon.scrape()
        assert daemon.process.poll() is None
        assert metric_value(exposition, "stiffness_early_stop", run="a") == 1
        assert metric_value(exposition, "stiffness_stop_pending", run="a") == 1
        errors = metric_value(
            exposition, "stiffness_checkpoint_errors_total", run="a", reason="stop-file"
        )
        assert errors == 1  # one error and one line for the stop, however often it is retried
        assert daemon.log.count(refusal) == 1
        # Nothing written through the link, and the link left as it was.
        assert link.is_symlink() and os.readlink(link) == str(victim)
        if target == "file":
            assert victim.read_text() == PRECIOUS
        else:
            assert not victim.exists()
        assert sorted(victim.parent.iterdir()) == ([victim] if target == "file" else [])
        assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]
        with store_of(config) as store:
            raised = store.stop_for("a")
        assert raised is not None and raised.rule == "second-look" and raised.pending
        # The operator removes the link: the pending stop is written, as a regular file.
        link.unlink()
        wait_for(lambda: link.is_file() and not link.is_symlink(), what="the stop file")
        assert json.loads(link.read_text())["rule"] == "second-look"
    finally:
        assert daemon.stop() == 0
    if target == "file":
        assert victim.read_text() == PRECIOUS
    assert "Traceback" not in daemon.log


# -- kill -9 in the middle of a burst ------------------------------------------------------


def test_kill_9_mid_burst_then_a_restart_evaluates_every_checkpoint_exactly_once(
    tmp_path: Path,
) -> None:
    """Moved here from tests/daemon/test_loop.py (``test_kill_9_then_restart_keeps_every_
    committed_result``), which checked the store only; now each daemon's own work is checked."""
    run_dir = tmp_path / "run"
    # Slow evaluations (the per-example loop on a 500-example probe, about 0.3 s each), so the
    # kill lands with work still queued: hooks take 5 ms, and all 12 would be done first.
    slow: dict[str, Any] = {
        "stiffness": {"device": "cpu", "backend": "loop"},
        "probe": {"per_class": 50},
    }
    config = make_config(
        tmp_path / "monitor", {"a": run_dir}, watch={"heartbeat_interval": 0.5}, **slow
    )
    every = list(range(1, 13))
    first = DaemonProcess(config)
    try:
        first.metrics_url()  # started: the burst arrives while it watches
        for step in every:
            write_checkpoint(run_dir / f"step_{step}.pt", step)
        wait_for(lambda: len(steps_stored(config)) >= 2, what="two evaluations")
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind
    committed = steps_stored(config)
    assert len(committed) < len(every), "the kill came too late to test a restart mid-queue"
    assert set(evaluated_by(first)) <= set(committed)  # logged only once stored
    second = DaemonProcess(config)
    try:
        wait_for(lambda: len(steps_stored(config)) == len(every), what="twelve evaluations")
        reported = wait_until_idle(second)
        exposition = second.scrape()
    finally:
        assert second.stop() == 0
    rest = [step for step in every if step not in committed]
    assert evaluated_by(second) == rest  # exactly the ones not committed, in step order
    assert reported == len(rest)
    assert metric_value(exposition, "stiffness_checkpoints_evaluated_total", run="a") == len(rest)
    assert steps_stored(config) == every  # in step order across the kill
    assert "Traceback" not in second.log


# -- SIGHUP with broken rules ----------------------------------------------------------------


def test_sighup_with_broken_rules_keeps_the_old_rules_and_the_daemon(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    config.write_text(config.read_text() + "rules: rules.yaml\n")
    rules = config.parent / "rules.yaml"
    rules.write_text(f"description: stops at the second look\nrules:\n- {SECOND_LOOK}\n")

    def replace(path: Path, content: bytes) -> None:
        """As an editor saves: a new file renamed over the old one."""
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(content)
        os.replace(fresh, path)

    def missing() -> None:
        rules.unlink()

    def folder() -> None:
        rules.mkdir()

    broken: list[tuple[Callable[[], None], str]] = [  # how they break, what the refusal says
        (lambda: replace(rules, b"rules: [{kind: nonsense}]\n"), f"{rules}:1: rules[0]: kind:"),
        (lambda: replace(rules, b"rules: [{kind: decline\n"), f"{rules}:2:1: invalid YAML"),
        (lambda: replace(rules, b"rules: [{name: x, kind: decline}, {name: x, kind: slope}]\n"),
         f"{rules}:1: rules: expected unique rule names"),
        (lambda: replace(rules, b"rules: [{kind: decline, patience: -3}]\n"),
         f"{rules}:1: rules[0].patience: expected a value >= 1"),
        (lambda: replace(rules, b""), f"{rules}: expected a mapping with a 'rules' list"),
        (lambda: replace(rules, b"\xff\xfe\x00garbage"), f"{config}: rules: cannot read {rules}"),
        (missing, f"{config}: rules: file not found: {rules}"),
        (folder, f"{config}: rules: cannot read {rules}"),
        (lambda: replace(config, config.read_bytes() + b"watch: [\n"), f"{config}:"),
    ]  # fmt: skip
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        write_checkpoint(run_dir / "step_1.pt", 1)
        wait_for(lambda: steps_stored(config) == [1], what="the first evaluation")
        for number, (breaks, says) in enumerate(broken, start=1):
            breaks()
            daemon.signal(signal.SIGHUP)
            refusals = wait_for_refusals(daemon, number)
            assert len(refusals) == number
            assert f"keeping the previous ones: {says}" in refusals[-1]
            assert daemon.process.poll() is None
        assert "rules reloaded" not in daemon.log
        # The previous rules still decide: the second look stops the run.
        write_checkpoint(run_dir / "step_2.pt", 2)
        wait_for(lambda: (run_dir / "STOP").is_file(), what="the stop file")
        assert json.loads((run_dir / "STOP").read_text())["rule"] == "second-look"
        exposition = daemon.scrape()
        assert (
            metric_value(exposition, "stiffness_rule_value", run="a", rule="second-look")
            is not None
        )
    finally:
        assert daemon.stop() == 0
    with store_of(config) as store:
        for evaluation in store.evaluations("a"):
            decided = {decision.rule for decision in store.decisions("a", evaluation.id)}
            assert decided == {"second-look"}, (evaluation.step, decided)
    assert "Traceback" not in daemon.log


def refused(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.log.splitlines() if "rules not reloaded" in line]


def wait_for_refusals(daemon: DaemonProcess, count: int) -> list[str]:
    """The daemon's refused reloads, once there are ``count`` of them."""
    wait_for(lambda: len(refused(daemon)) >= count, what=f"refused reload {count}")
    return refused(daemon)
