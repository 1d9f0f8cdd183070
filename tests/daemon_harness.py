"""A real daemon in a subprocess, driven the way an operator drives it: config, files, signals.

Tests write checkpoints with the example trainer's model (real ``torch.save`` files), start
``python -m monitor watch`` with a config in a temporary folder, read its log, scrape its
metrics over HTTP and inspect its SQLite store.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from monitor.store.store import Store, StoredError, StoredEvaluation, StoredSkip, StoreError
from tests.conftest import EXAMPLE

sys.path.insert(0, str(EXAMPLE))
from model import build_mlp


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_checkpoint(path: Path, step: int, seed: int | None = None, hidden: int = 64) -> Path:
    """A trainer-style checkpoint (temp file, then rename) of the example MLP."""
    torch.manual_seed(step if seed is None else seed)
    model = build_mlp(hidden=hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"model_state_dict": model.state_dict(), "global_step": step}, temporary)
    os.replace(temporary, path)
    return path


def make_config(folder: Path, runs: dict[str, Path], **sections: dict[str, Any]) -> Path:
    """A config beside copies of the example's model and probe factories."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "model.py", folder / "model.py")
    shutil.copy(EXAMPLE / "digits_data.py", folder / "digits_data.py")
    config: dict[str, Any] = {
        "model": {"factory": "model:build_mlp"},
        "probe": {"factory": "digits_data:probe", "per_class": 10},
        "stiffness": {"device": "cpu"},
        "runs": [{"name": name, "path": str(path)} for name, path in runs.items()],
        "watch": {
            "settle_seconds": 0.3,
            "poll_interval": 0.2,
            "rescan_interval": 2,
            "corrupt_after": 1.0,
        },
        "metrics": {"port": 0},
        "store": {"path": "state/state.db"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class DaemonProcess:
    """``stiffness-monitor watch`` as a subprocess with its log captured to a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "watch", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def metrics_url(self) -> str:
        match = wait_for(
            lambda: re.search(r"metrics on (http://\S+/metrics)", self.log), what="metrics URL"
        )
        return str(match.group(1))

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as response:
            return str(response.read().decode())

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the daemon must exit on its own within ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition, or None when absent."""
    for line in exposition.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in series for key, val in labels.items()):
            return float(value)
    return None


def _read_store(config: Path, read: Callable[[Store], list[Any]]) -> list[Any]:
    """Read the daemon's store from another connection, as ``report`` or ``backtest`` would."""
    database = config.parent / "state" / "state.db"
    try:
        with Store(database, readonly=True) as store:
            return read(store)
    except StoreError:
        return []  # not created (or not migrated) yet


def stored_evaluations(config: Path) -> list[StoredEvaluation]:
    return _read_store(config, lambda store: store.evaluations())


def stored_errors(config: Path) -> list[StoredError]:
    return _read_store(config, lambda store: store.errors())


def stored_skips(config: Path) -> list[StoredSkip]:
    return _read_store(config, lambda store: store.skipped())
