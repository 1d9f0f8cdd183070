"""The store (issue 19, items 5 and 7): one daemon per store, readers beside it, and a full
disk that pauses the daemon instead of ending it, losing nothing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
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


def test_a_second_daemon_on_the_same_store_exits_2_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    write_checkpoint(run_dir / "step_1.pt", 1)
    first = DaemonProcess(config)
    try:
        wait_for(lambda: stored_evaluations(config), what="the first daemon's evaluation")
        second = subprocess.run(
            [sys.executable, "-m", "monitor", "watch", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=config.parent,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        store = config.parent / "state" / "state.db"
        assert f"error: {store}: another daemon (PID {first.process.pid}) is using this store" in (
            second.stderr
        )
        assert first.process.poll() is None
        # readers share the store with the daemon
        backtest = run_cli("backtest", "-c", config)
        assert backtest.returncode == 0, backtest.stderr
        assert "digits" in backtest.stdout
        report = run_cli("report", "-c", config, "--out", tmp_path / "report")
        assert report.returncode == 0, report.stderr
    finally:
        assert first.stop() == 0
    # the lock dies with its holder: a daemon started afterwards runs
    after = DaemonProcess(config)
    try:
        after.metrics_url()
    finally:
        assert after.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of our own (needs root with CAP_SYS_ADMIN; else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tool = shutil.which("mount")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        [tool, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_full_store_disk_pauses_the_daemon_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    run_dir = tmp_path / "run"
    config = make_config(
        tmp_path / "monitor", {"digits": run_dir}, store={"path": str(small_disk / "state.db")}
    )
    write_checkpoint(run_dir / "step_1.pt", 1)
    daemon = DaemonProcess(config)
    try:
        base = daemon.metrics_url().removesuffix("/metrics")

        def steps() -> list[int | None]:
            return sorted(e.step for e in stored_evaluations_at(small_disk / "state.db"))

        wait_for(lambda: steps() == [1], what="the first evaluation")
        filler = fill(small_disk)
        for step in (2, 3):
            write_checkpoint(run_dir / f"step_{step}.pt", step)
        wait_for(lambda: "the store cannot commit" in daemon.log, what="the store failure")
        wait_for(lambda: metric_value(daemon.scrape(), "stiffness_store_writable") == 0,
                 what="stiffness_store_writable 0")  # fmt: skip
        assert status(base + "/readyz") == 503
        assert status(base + "/healthz") == 200
        assert daemon.process.poll() is None, daemon.log
        assert (metric_value(daemon.scrape(), "stiffness_store_write_failures_total") or 0) >= 1
        filler.unlink()  # space returns
        wait_for(lambda: steps() == [1, 2, 3], timeout=120, what="both held evaluations stored")
        wait_for(lambda: status(base + "/readyz") == 200, what="readiness back")
        assert metric_value(daemon.scrape(), "stiffness_store_writable") == 1
        assert "the store commits again" in daemon.log
        assert metric_value(daemon.scrape(), "stiffness_checkpoints_evaluated_total",
                            run="digits") == 3  # fmt: skip
    finally:
        assert daemon.stop() == 0


def stored_evaluations_at(database: Path) -> list:  # type: ignore[type-arg]
    from monitor.store.store import Store, StoreError

    try:
        with Store(database, readonly=True) as store:
            return store.evaluations()
    except StoreError:
        return []
