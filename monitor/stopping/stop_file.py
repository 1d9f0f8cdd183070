"""The stop signal, daemon side: the stop file a trainer polls.

The stop file is the one contract between the monitor and a training job it does not control,
so it is written to be trusted by a reader that polls it at any moment (DESIGN §4, issue 5):

- **Atomic.** The JSON goes to a temporary file in the same folder (created exclusively,
  never through a symlink, fsynced), which is then renamed over the target with
  ``os.replace``. A poller sees either no file or the whole file, never a prefix.
- **Never follows a planted symlink.** If the target path is a symlink, the write is refused
  with :class:`StopSignalError` and the link's target is left untouched. (Even if a link is
  planted between that check and the rename, ``rename`` replaces the link itself; it never
  writes through it.) A symlinked *parent folder* is followed: that is where the operator
  chose to put the run, and checkpoint folders are often symlinks into shared storage.
- **Idempotent and never silently retracted.** An identical stop file (same run, rule and step)
  is left as it is; a different existing file (an earlier stop, or one an operator wrote by
  hand) is kept too, with one WARNING, because a trainer may already have acted on it.

A write that fails raises; the daemon keeps that stop pending in its store and writes the file
on a later turn of its loop or after a restart. The optional ``on_stop`` command the daemon
runs once the file is written is in ``on_stop``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError

log = logging.getLogger("monitor.stop")

#: Written into every stop file as ``"version"``; readers can reject versions they do not know.
FORMAT_VERSION = 1
#: An existing stop file larger than this is not read back (it cannot be one of ours).
_MAX_EXISTING_BYTES = 1 << 20


class StopSignalError(MonitorError):
    """The stop file cannot be written safely (symlink, permissions, full disk, not a file)."""


def utc_now() -> str:
    """The current time in ISO 8601, UTC, e.g. ``2026-01-02T03:04:05.678+00:00``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StopSignal:
    """Why and where a run should stop: the content of its stop file.

    ``value`` is the (smoothed) metric value that triggered the rule and ``best`` the best value
    the rule had seen; either may be None (a rule that tracks no best, or a non-finite value,
    which strict JSON cannot carry; ``reason`` then says what happened). ``attempt`` is the
    attempt of the run that stopped (a rerun into the same folder is the next attempt), and
    ``best_checkpoint`` the attempt's best checkpoint when the stop was raised (``metric``,
    ``mode``, ``step``, ``value``, ``path``), the one to restore.
    """

    run: str
    checkpoint: str
    step: int
    rule: str
    reason: str
    metric: str
    value: float | None
    best: float | None
    time: str = field(default_factory=utc_now)
    attempt: int = 1
    best_checkpoint: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StopSignal:
        """The signal ``to_dict`` gave (a stored stop's payload), to write again unchanged."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to the stop file (strict JSON: non-finite numbers → null)."""
        data: dict[str, Any] = {"version": FORMAT_VERSION, **asdict(self)}
        for key in ("value", "best"):
            number = data[key]
            data[key] = None if number is None or not math.isfinite(number) else float(number)
        return data

    def to_json(self) -> str:
        """One JSON object on one line, newline-terminated, keys in a stable order."""
        return json.dumps(self.to_dict(), allow_nan=False, ensure_ascii=False) + "\n"

    def same_stop(self, data: dict[str, Any]) -> bool:
        """Whether a stop file's content records this same stop (same run, attempt, rule and
        step); a file from before attempts were recorded is attempt 1."""
        found = (data.get("run"), data.get("attempt", 1), data.get("rule"), data.get("step"))
        return found == (self.run, self.attempt, self.rule, self.step)

    @staticmethod
    def earlier_attempt(data: Mapping[str, Any], run: str, attempt: int) -> bool:
        """Whether a stop (or best-checkpoint) file's content is one this monitor wrote for an
        earlier attempt of ``run`` (a file written by hand, or by another tool, is not)."""
        ours = data.get("version") == FORMAT_VERSION and data.get("run") == run
        earlier = data.get("attempt", 1)
        return ours and isinstance(earlier, int) and earlier < attempt


def stop_file_path(template: str, run_name: str, run_dir: str | Path, base_dir: str | Path) -> Path:
    """Expand the ``stop.file`` template for one run.

    ``{run_dir}`` is the run's checkpoint folder and ``{run}`` its name; a relative result is
    taken relative to ``base_dir`` (the config file's folder), like every path in the config.
    The path is deliberately not resolved: resolving would follow a symlink planted at the
    target, which :func:`write_stop_file` must see in order to refuse it.
    """
    path = Path(template.format(run_dir=os.fspath(run_dir), run=run_name)).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def write_stop_file(path: str | Path, signal: StopSignal) -> bool:
    """Write ``signal`` to ``path`` atomically; True if written, False if a stop file was kept.

    Missing parent folders are created. Raises :class:`StopSignalError` when the target is a
    symlink or not a regular file, or when the folder cannot be written (permissions, full disk,
    read-only filesystem); no temporary file is left behind.
    """
    path = Path(path)
    existing = read_existing(path)
    if existing is not None:
        if signal.same_stop(existing):
            log.debug("stop file %s already records this stop; left as it is", path)
        else:
            log.warning(
                "stop file %s already exists with other content (run %r, rule %r, step %r); "
                "kept it and did not write the stop for run %r, rule %r, step %d",
                path,
                existing.get("run"),
                existing.get("rule"),
                existing.get("step"),
                signal.run,
                signal.rule,
                signal.step,
            )
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StopSignalError(f"cannot create the folder of stop file {path}: {exc}") from exc
    write_atomically(path, signal.to_json().encode("utf-8"))
    log.info(
        "wrote stop file %s (run %s, rule %s, step %d)", path, signal.run, signal.rule, signal.step
    )
    return True


def remove_earlier_attempt(path: Path, run: str, attempt: int) -> bool:
    """Remove the stop (or best-checkpoint) file at ``path`` if this monitor wrote it for an
    earlier attempt of ``run``: a rerun must not be stopped by its predecessor's stop, nor
    restore its predecessor's best. True when removed; a file written by hand, a symlink or
    anything unreadable is left alone."""
    try:
        existing = read_existing(path)
    except StopSignalError:
        return False
    if existing is None or not StopSignal.earlier_attempt(existing, run, attempt):
        return False
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove the stop file %s of an earlier attempt: %s", path, exc)
        return False
    return True


def read_existing(path: Path) -> dict[str, Any] | None:
    """The parsed content of an existing stop file (``{}`` if unreadable as JSON), else None."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StopSignalError(f"cannot inspect stop file {path}: {exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        try:
            target = f" (to {os.readlink(path)!r})"
        except OSError:
            target = ""
        raise StopSignalError(
            f"refusing to write stop file {path}: it is a symlink{target}; "
            "remove it or point stop.file elsewhere"
        )
    if not stat.S_ISREG(info.st_mode):
        raise StopSignalError(f"refusing to write stop file {path}: it exists and is not a file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(_MAX_EXISTING_BYTES + 1)
    except OSError as exc:
        raise StopSignalError(f"cannot read existing stop file {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError too
        return {}
    return data if isinstance(data, dict) else {}


def write_atomically(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a fresh temporary file beside ``path``, fsync, rename over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o644)
    except OSError as exc:
        raise StopSignalError(f"cannot write stop file {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, 0o644)  # the umask may narrow it; trainers often run as other users
            handle.write(payload)
            handle.flush()
            os.fsync(fd)
        os.replace(temporary, path)
    except BaseException as exc:  # full disk, read-only filesystem, but also KeyboardInterrupt
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise StopSignalError(f"cannot write stop file {path}: {exc}") from exc
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: some filesystems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
