"""``stiffness-monitor demo``: the whole loop on digits, with nothing to configure.

Two real subprocesses, wired the way a user wires them: the trainer
(``python -m monitor.demo.trainer``) writes ``step_N.pt`` each epoch and polls the stop file;
the daemon (``python -m monitor watch``) evaluates each checkpoint, applies the shipped default
rules and writes the stop file. This process only starts them, prints progress read from the
store (read-only, as any other reader would), and at the end renders the report and a summary.
Both children run in their own sessions, so a terminal's Ctrl-C reaches only the demo, which
then stops them itself: nothing is left running whatever happens.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import yaml

from monitor.demo.pacing import Pacer
from monitor.demo.summary import Progress, summarise
from monitor.demo.trainer import steps_per_epoch
from monitor.errors import ConfigError, MonitorError
from monitor.extras import require_demo_extra
from monitor.report.files import atomic_write
from monitor.report.writer import write_report
from monitor.rules.spec import shipped_rules_path

MARKER = ".stiffness-demo"  # marks a folder the demo made, so a rerun may clear it
URL_PATTERN = re.compile(r"metrics on (http://\S+/metrics)")
BATCH_SIZE = 32
RUN = "digits"


class DemoError(MonitorError):
    """A demo subprocess failed: the message carries the tail of its log."""


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs; the defaults stop under the shipped default rules (see docs)."""

    workdir: Path = Path("stiffness-demo")
    noise: float = 0.4
    lr: float = 0.05
    epochs: int = 40
    seed: int = 0
    epoch_seconds: float = 1.0
    per_class: int = 20
    keep_running: bool = False

    @property
    def timeout(self) -> float:
        """Seconds before the demo gives up on a trainer that neither stops nor finishes."""
        return self.epochs * max(self.epoch_seconds, 0.5) + 120.0


def prepare_workdir(folder: Path) -> None:
    """Start clean, but delete only what an earlier demo made in a folder it marked."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise ConfigError(
            f"--workdir {folder}: folder exists and was not made by the demo; "
            "pass an empty or new folder"
        )
    for name in ("checkpoints", "state", "report"):
        old = folder / name
        if old.is_symlink():  # removed, never followed: its target is not the demo's
            old.unlink()
        elif old.exists():
            shutil.rmtree(old)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MARKER, b"made by stiffness-monitor demo\n")


def write_config(folder: Path, options: DemoOptions) -> Path:
    """The generated config: pair mode (sign, train-val and distance data for the report),
    gradient statistics on (the shipped default reads the training split's disparity)."""
    config = {
        "model": {"factory": "monitor.demo.trainer:build_mlp", "kwargs": {"hidden": 64}},
        "probe": {
            "factory": "monitor.demo.trainer:probe",
            "kwargs": {"noise": options.noise, "seed": options.seed},
            "per_class": options.per_class,
        },
        "stiffness": {"mode": "pair", "device": "cpu", "batch_size": 128, "statistics": True},
        "runs": [{"name": RUN, "path": "checkpoints", "patterns": ["step_*.pt"]}],
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2, "rescan_interval": 5},
        "rules": str(shipped_rules_path()),
        "metrics": {"host": "127.0.0.1", "port": 0},
        "store": {"path": "state/state.db"},
    }
    path = folder / "config.yaml"
    header = "# Written by `stiffness-monitor demo`; rerun `stiffness-monitor watch -c` on it.\n"
    atomic_write(path, (header + yaml.safe_dump(config, sort_keys=False)).encode("utf-8"))
    return path


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _start(command: list[str], log: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    """SIGTERM (the daemon's graceful stop), then SIGKILL if it does not end in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # paused by the pacer: it must run to end
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_url(daemon: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> str:
    """The metrics URL the daemon logs once it serves (it bound port 0: a free port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = URL_PATTERN.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
        if daemon.poll() is not None:
            raise DemoError(f"the daemon exited with status {daemon.returncode}:\n{_tail(log)}")
        time.sleep(0.1)
    raise DemoError(f"the daemon did not start within {timeout:.0f} s:\n{_tail(log)}")


def run_demo(options: DemoOptions) -> int:
    """Run the demo; 0 when it completed (stopped or not: the summary says which)."""
    require_demo_extra()

    folder = options.workdir.resolve()
    prepare_workdir(folder)
    config = write_config(folder, options)
    checkpoints = folder / "checkpoints"
    stop_file = checkpoints / "STOP"
    daemon: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with (folder / "daemon.log").open("wb") as daemon_log:
            daemon = _start(
                [sys.executable, "-m", "monitor", "watch", "-c", str(config)], daemon_log, folder
            )
        url = wait_for_url(daemon, folder / "daemon.log")
        print(f"stiffness-monitor demo in {folder}\nmetrics: {url}", flush=True)
        trainer_command = [
            sys.executable, "-m", "monitor.demo.trainer", "--out", str(checkpoints),
            "--epochs", str(options.epochs), "--lr", str(options.lr),
            "--noise", str(options.noise), "--seed", str(options.seed),
            "--batch-size", str(BATCH_SIZE), "--epoch-seconds", str(options.epoch_seconds),
        ]  # fmt: skip
        with (folder / "trainer.log").open("wb") as trainer_log:
            trainer = _start(trainer_command, trainer_log, folder)
        print(
            f"training: {options.epochs} epochs, lr {options.lr}, label noise "
            f"{options.noise:.0%}; one line per checkpoint:",
            flush=True,
        )
        progress = Progress(folder / "state" / "state.db", RUN, steps_per_epoch(BATCH_SIZE))
        _follow(options, progress, daemon, trainer, checkpoints, folder)
        if not options.keep_running:
            _stop(daemon)
        report = write_report(config, folder / "report")
        obeyed = "stopping after epoch" in _tail(folder / "trainer.log", 3)
        store = folder / "state" / "state.db"
        print(summarise(store, RUN, stop_file, report, options.epochs, obeyed), flush=True)
        if options.keep_running:
            print(f"the daemon keeps running: {url} (Ctrl-C to stop it)", flush=True)
            try:
                daemon.wait()
            except KeyboardInterrupt:
                print("\nstopping the daemon", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the trainer and the daemon", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short and leave a child running.
        impatient = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _stop(trainer, grace=5.0)
            _stop(daemon)
        finally:
            signal.signal(signal.SIGINT, impatient)
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _follow(
    options: DemoOptions,
    progress: Progress,
    daemon: subprocess.Popen[bytes],
    trainer: subprocess.Popen[bytes],
    checkpoints: Path,
    folder: Path,
) -> None:
    """Print progress until the trainer has ended and the daemon has seen every checkpoint."""
    deadline = time.monotonic() + options.timeout
    drained_by: float | None = None
    pacer = Pacer(trainer, checkpoints)
    while True:
        evaluated = progress.poll()
        pacer.update(evaluated)
        if daemon.poll() is not None:
            log = _tail(folder / "daemon.log")
            raise DemoError(f"the daemon exited with status {daemon.returncode}:\n{log}")
        if trainer.poll() is not None:
            if trainer.returncode != 0:
                log = _tail(folder / "trainer.log")
                raise DemoError(f"the trainer failed with status {trainer.returncode}:\n{log}")
            drained_by = drained_by or time.monotonic() + 60.0
            written = len(list(checkpoints.glob("step_*.pt")))
            if evaluated >= written and len(progress.shown) >= evaluated:
                return
            if time.monotonic() > drained_by:
                print(f"warning: the daemon evaluated {evaluated} of {written} checkpoints")
                return
        elif time.monotonic() > deadline:
            _stop(trainer, grace=5.0)
            raise DemoError(f"the trainer did not finish within {options.timeout:.0f} s")
        time.sleep(0.2)
