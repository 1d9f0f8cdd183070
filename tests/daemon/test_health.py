"""Readiness and liveness from their parts, on a clock the test moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config.schema import load_config
from monitor.daemon.health import Health
from monitor.daemon.watchers import Watchers
from monitor.watching.watcher import RunWatcher
from tests.daemon_harness import make_config, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def started(stall: float = 10.0, grace: float = 5.0) -> tuple[Health, Clock]:
    clock = Clock()
    health = Health(stall, grace, clock=clock)
    health.start()
    return health, clock


def test_not_ready_before_start_nor_after_finish() -> None:
    health = Health(10.0, 5.0)
    assert health.problems() == ["starting or stopping"] and not health.is_ready()
    health.start()
    assert health.is_ready() and health.is_live()
    health.finish()
    assert not health.is_ready()


def test_a_stalled_loop_is_unready_then_dead_after_the_grace() -> None:
    health, clock = started(stall=10.0, grace=5.0)
    clock.now += 10.0
    assert health.is_ready()  # exactly at the timeout: still ready
    clock.now += 0.5
    assert health.problems() == ["the evaluation loop has not turned for 10s"]
    assert health.is_live()
    clock.now += 5.0
    assert not health.is_live()
    health.turned()
    assert health.is_ready() and health.is_live()


def test_a_dead_part_is_unready_at_once_and_dead_after_the_grace() -> None:
    health, clock = started(grace=5.0)
    health.set_dead("the watcher of run a", True)
    assert health.problems() == ["the watcher of run a is dead"]
    clock.now += 4.0
    health.set_dead("the watcher of run a", True)  # seen again: still dead since the start
    assert health.is_live()
    clock.now += 2.0
    assert not health.is_live()
    health.set_dead("the watcher of run a", False)
    assert health.is_ready() and health.is_live()


def test_a_store_that_cannot_commit_is_unready_but_alive() -> None:
    health, clock = started(grace=5.0)
    health.set_store_ok(False)
    clock.now += 60.0
    health.turned()
    assert health.problems() == ["the store cannot commit"]
    assert health.is_live()


def test_watchers_restart_a_dead_one_once_and_report_a_second_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(make_config(tmp_path / "monitor", {"a": run_dir}))

    def broken(self: RunWatcher) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(RunWatcher, "_take_incoming", broken)
    health = Health(60.0, 60.0)
    health.start()
    watchers = Watchers(config, health, on_ready=lambda c: None, on_problem=lambda *a: None)
    watchers.start()
    try:
        first = watchers._watchers["a"]
        wait_for(lambda: not first.is_alive(), what="the first watcher's death")
        assert watchers.check() is True  # restarted
        assert health.problems() == ["the watcher of run a is dead"]
        assert watchers._watchers["a"] is not first
        wait_for(lambda: not watchers._watchers["a"].is_alive(), what="the second death")
        assert watchers.check() is False
        monkeypatch.undo()
    finally:
        watchers.stop()


def test_a_live_watcher_clears_the_dead_mark(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(make_config(tmp_path / "monitor", {"a": run_dir}))
    health = Health(60.0, 60.0)
    health.start()
    health.set_dead("the watcher of run a", True)
    watchers = Watchers(config, health, on_ready=lambda c: None, on_problem=lambda *a: None)
    watchers.start()
    try:
        wait_for(lambda: watchers.check() and health.is_ready(), what="a healthy watcher")
    finally:
        watchers.stop()
