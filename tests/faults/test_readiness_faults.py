"""Readiness tells the truth (issue 19, item 2): a dead watcher thread or a stalled loop makes
``/readyz`` fail, ``/healthz`` follows after a grace period, a dead watcher is restarted once
and a second death ends the daemon with a non-zero status for its supervisor."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import load_config
from monitor.daemon.loop import Daemon
from monitor.watching.watcher import RunWatcher
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class RunningDaemon:
    """``Daemon.run`` in a thread of this process, so a test can break a watcher thread."""

    def __init__(self, config: Path) -> None:
        self.daemon = Daemon(load_config(config))
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.daemon.run()

    def url(self, path: str) -> str:
        port = wait_for(lambda: self.daemon.metrics_port, what="the metrics port")
        return f"http://127.0.0.1:{port}{path}"

    def stop(self) -> int | None:
        self.daemon.request_stop()
        self.thread.join(60)
        return self.code


def break_watchers(monkeypatch: pytest.MonkeyPatch, deaths: int) -> list[int]:
    """Make the first ``deaths`` watcher threads raise inside their loop."""
    died: list[int] = []
    original = RunWatcher._take_incoming

    def take_incoming(self: RunWatcher) -> Any:
        if len(died) < deaths:
            died.append(1)
            raise RuntimeError("planted failure in the watcher thread")
        return original(self)

    monkeypatch.setattr(RunWatcher, "_take_incoming", take_incoming)
    return died


def test_a_watcher_that_dies_twice_ends_the_daemon_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    died = break_watchers(monkeypatch, deaths=2)
    with caplog.at_level(logging.INFO, logger="monitor"):
        running = RunningDaemon(config)
        running.thread.join(90)
    assert not running.thread.is_alive(), "the daemon kept running with a dead watcher"
    assert running.code == 1
    assert len(died) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "monitor.daemon"]
    assert "the watcher of run digits died; restarting it (once)" in messages
    assert any("died again after a restart; exiting with status 1" in m for m in messages)
    assert running.daemon.metrics.is_ready is False


def test_a_watcher_that_dies_once_is_restarted_and_keeps_watching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    died = break_watchers(monkeypatch, deaths=1)
    running = RunningDaemon(config)
    try:
        wait_for(lambda: died, what="the planted watcher death")
        ready = running.url("/readyz")
        wait_for(lambda: status(ready) == 200, what="readiness after the restart")
        write_checkpoint(run_dir / "step_1.pt", 1)
        wait_for(lambda: stored_evaluations(config), what="an evaluation by the new watcher")
    finally:
        assert running.stop() == 0


SLOW_MODEL = """
import time
from pathlib import Path

from model import build_mlp


class Slow(type(build_mlp())):
    def forward(self, x):
        if (Path(__file__).parent / "SLOW").exists():
            time.sleep(600)
        return super().forward(x)


def build(**kwargs):
    model = build_mlp(**kwargs)
    model.__class__ = Slow
    return model
"""


def test_a_stalled_loop_fails_readyz_then_healthz_after_the_grace(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    folder = tmp_path / "monitor"
    config = make_config(
        folder,
        {"digits": run_dir},
        model={"factory": "slow_model:build"},
        metrics={"stall_timeout": 2, "liveness_grace": 3},
    )
    (folder / "slow_model.py").write_text(SLOW_MODEL)
    daemon = DaemonProcess(config)
    try:
        base = daemon.metrics_url().removesuffix("/metrics")
        wait_for(lambda: status(base + "/readyz") == 200, what="readiness")
        assert status(base + "/healthz") == 200
        (folder / "SLOW").touch()  # from now on every forward pass hangs
        write_checkpoint(run_dir / "step_1.pt", 1)
        wait_for(lambda: status(base + "/readyz") == 503, what="/readyz failing on the stall")
        assert status(base + "/healthz") == 200, "liveness failed before its grace period"
        wait_for(lambda: status(base + "/healthz") == 503, what="/healthz after the grace")
        assert daemon.process.poll() is None
    finally:
        assert daemon.stop(timeout=30) == 0
