"""The stop signal, daemon side: the stop file's content, atomicity, safety and the on_stop command.

Everything runs against the real filesystem and real processes: a reader polling in another
process, planted symlinks, a folder the writer may not write to, a full filesystem, commands
that fail, hang or do not exist.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import MonitorError
from monitor.stopping.stop_file import (
    FORMAT_VERSION,
    StopSignal,
    StopSignalError,
    stop_file_path,
    write_stop_file,
)
from monitor.stopping.trainer import read_stop

HERE = Path(__file__).resolve().parent
NOBODY = 65534
REFUSED = "refusing to write stop file"


def make_signal(
    step: int = 1200,
    *,
    rule: str = "within-decline",
    reason: str = "within-class stiffness fell 0.05 below its best for 3 evaluations",
    value: float | None = 0.31,
    best: float | None = 0.36,
) -> StopSignal:
    return StopSignal(
        run="run-a",
        checkpoint=f"/ckpt/run-a/step_{step}.pt",
        step=step,
        rule=rule,
        reason=reason,
        metric="within",
        value=value,
        best=best,
    )


def refused_as_symlink(link: Path, target: Path) -> str:
    """The whole refusal, as a pattern: a word alone may be in pytest's folder name too."""
    message = f"{REFUSED} {link}: it is a symlink (to {str(target)!r}); "
    return f"^{re.escape(message + 'remove it or point stop.file elsewhere')}$"


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


# --- content and path ---------------------------------------------------------------------


def test_stop_file_holds_every_field_as_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    signal = make_signal()
    assert write_stop_file(path, signal) is True
    text = path.read_text()
    data = json.loads(text, parse_constant=pytest.fail)  # strict: no NaN/Infinity
    assert data == {
        "version": FORMAT_VERSION,
        "run": "run-a",
        "checkpoint": "/ckpt/run-a/step_1200.pt",
        "step": 1200,
        "rule": "within-decline",
        "reason": signal.reason,
        "metric": "within",
        "value": 0.31,
        "best": 0.36,
        "time": signal.time,
        "attempt": 1,
        "best_checkpoint": None,
    }
    assert datetime.fromisoformat(data["time"]).utcoffset() == timedelta(0)
    assert text.endswith("\n") and text.count("\n") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []
    assert read_stop(path) == data


def test_non_finite_values_are_written_as_null() -> None:
    data = json.loads(make_signal(value=float("nan"), best=float("inf")).to_json())
    assert data["value"] is None and data["best"] is None


def test_stop_file_is_world_readable_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_stop_file(tmp_path / "STOP", make_signal())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "STOP").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{run_dir}/STOP", "/ckpt/run-a/STOP"),
        ("/shared/stops/{run}.stop", "/shared/stops/run-a.stop"),
        ("stops/{run}/STOP", "/etc/monitor/stops/run-a/STOP"),
    ],
    ids=["default", "absolute", "relative-to-config"],
)
def test_stop_file_path_expands_the_template(template: str, expected: str) -> None:
    path = stop_file_path(template, "run-a", Path("/ckpt/run-a"), base_dir=Path("/etc/monitor"))
    assert path == Path(expected)


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "stops" / "run-a" / "STOP"
    assert write_stop_file(path, make_signal()) is True
    assert read_stop(path) is not None


# --- atomicity under a concurrent reader ----------------------------------------------------


def poll_while(path: Path, tmp_path: Path, write: Callable[[], None]) -> dict[str, Any]:
    """Run ``write()`` while tests/stopping/stop_reader.py polls ``path`` in another process."""
    done = tmp_path / "done"
    reader = subprocess.Popen(
        [sys.executable, str(HERE / "stop_reader.py"), str(path), str(done)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        write()
        done.touch()
        out, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    counts: dict[str, Any] = json.loads(out)
    return counts


def test_a_polling_reader_never_sees_a_partial_stop_file(tmp_path: Path) -> None:
    path = tmp_path / "STOP"
    reason = "x" * 200_000  # large, so that a non-atomic write would take many reads to finish

    def write_200() -> None:
        for step in range(200):
            assert write_stop_file(path, make_signal(step, reason=reason)) is True
            time.sleep(0.001)
            path.unlink()  # so the next write is a fresh stop, not an idempotent no-op

    counts = poll_while(path, tmp_path, write_200)
    assert counts["partial"] == 0, counts
    assert counts["complete"] > 0, counts  # the reader did overlap the writes
    assert leftovers(tmp_path) == []


def test_the_reader_does_catch_a_non_atomic_writer(tmp_path: Path) -> None:
    """The control for the test above: the same reader sees a plain write half-done."""
    path = tmp_path / "STOP"
    payload = make_signal(reason="x" * 200_000).to_json()

    def write_naively() -> None:
        for _ in range(50):
            with open(path, "w") as handle:
                handle.write(payload[: len(payload) // 2])
                handle.flush()
                time.sleep(0.002)
                handle.write(payload[len(payload) // 2 :])
            path.unlink()

    counts = poll_while(path, tmp_path, write_naively)
    assert counts["partial"] > 0, counts


# --- symlinks, idempotence, existing files --------------------------------------------------


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "STOP"
    link.symlink_to(victim)
    with pytest.raises(StopSignalError, match=refused_as_symlink(link, victim)) as caught:
        write_stop_file(link, make_signal())
    assert isinstance(caught.value, MonitorError)
    assert victim.read_text() == "precious\n"
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert leftovers(tmp_path) == []


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "created-through-the-link"
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "STOP"
    link.symlink_to(target)
    with pytest.raises(StopSignalError, match=refused_as_symlink(link, target)):
        write_stop_file(link, make_signal())
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_symlinked_run_folder_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real-run"
    real.mkdir()
    (tmp_path / "run").symlink_to(real, target_is_directory=True)
    assert write_stop_file(tmp_path / "run" / "STOP", make_signal()) is True
    assert read_stop(real / "STOP") is not None


def test_a_folder_at_the_stop_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "STOP").mkdir()
    path = tmp_path / "STOP"
    message = f"{REFUSED} {path}: it exists and is not a file"
    with pytest.raises(StopSignalError, match=f"^{re.escape(message)}$"):
        write_stop_file(path, make_signal())


def test_writing_the_same_stop_again_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "STOP"
    assert write_stop_file(path, make_signal()) is True
    before = path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns
    time.sleep(0.01)
    with caplog.at_level(logging.DEBUG, logger="monitor.stop"):
        again = make_signal()  # a later time: the same stop is run, rule and step
        assert write_stop_file(path, again) is False
    assert (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns) == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "existing",
    [
        make_signal(step=800).to_json(),
        make_signal(rule="slope").to_json(),
        '{"reason": "stopped by hand"}\n',
        "",
        "not json at all",
    ],
    ids=["earlier-step", "other-rule", "hand-written", "empty", "garbage"],
)
def test_a_different_existing_stop_file_is_kept_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, existing: str
) -> None:
    path = tmp_path / "STOP"
    path.write_text(existing)
    with caplog.at_level(logging.WARNING, logger="monitor.stop"):
        assert write_stop_file(path, make_signal()) is False
    assert path.read_text() == existing
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert leftovers(tmp_path) == []


# --- folders that cannot be written ---------------------------------------------------------


def test_a_failed_write_raises_and_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StopSignalError) as caught:
        write_stop_file(tmp_path / "STOP", make_signal())
    message = str(caught.value)
    assert str(tmp_path / "STOP") in message and os.strerror(errno.ENOSPC) in message
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_raises_a_stop_signal_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
        try:
            stop = folder / "STOP"
            message = f"^{re.escape(f'cannot write stop file {stop}: ')}.*Permission denied"
            with pytest.raises(StopSignalError, match=message):
                write_stop_file(stop, make_signal())
        finally:
            folder.chmod(0o700)
        return
    # Root ignores permissions: a subprocess imports what it needs as root, then becomes
    # 'nobody' and writes into a root-owned 0o755 folder (outside pytest's 0o700 tree).
    folder = Path(tempfile.mkdtemp(prefix="stop-ro-"))
    try:
        folder.chmod(0o755)
        code = textwrap.dedent(
            f"""
            import os
            from monitor.stopping.stop_file import StopSignal, StopSignalError, write_stop_file
            signal = StopSignal("run-a", "/ckpt/step_1.pt", 1, "rule", "why", "within", 0.1, 0.2)
            os.setgroups([])
            os.setgid({NOBODY})
            os.setuid({NOBODY})
            try:
                write_stop_file({str(folder / "STOP")!r}, signal)
            except StopSignalError as exc:
                print("refused:", exc)
            else:
                print("written")
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("refused:"), result.stdout
        refusal = f"refused: cannot write stop file {folder / 'STOP'}: "
        assert result.stdout.startswith(refusal) and "Permission denied" in result.stdout
        assert os.listdir(folder) == []
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last byte (needs root with CAP_SYS_ADMIN; else skipped)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    tool = shutil.which("mount")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("mounting a tiny tmpfs needs root and mount(8)")
    result = subprocess.run(
        [tool, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        with open(mount / "filler", "wb") as handle:
            try:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_raises_and_leaves_no_temporary_file(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "STOP"
    with pytest.raises(StopSignalError) as caught:
        write_stop_file(path, make_signal(reason="x" * 10_000))
    message = str(caught.value)
    assert message.startswith(f"cannot write stop file {path}: ") and "No space left" in message
    assert os.listdir(tiny_tmpfs) == ["filler"]
