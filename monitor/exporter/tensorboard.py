"""Every evaluation as TensorBoard events, so the TensorBoard a user already runs shows it.

One ``BoardWriter`` per run writes, at the checkpoint's step, one ``BoardEntry``: the stored
evaluation (the ``evaluate --json`` object the store keeps), what each rule said about it and
whether the run's stop is raised. Tags (the README lists them):

- ``stiffness/<pair set>/<metric>``: ``within_class``, ``between_class`` and their
  ``_pooled`` forms, ``sign_`` ones in pair mode, per pair set (``val-val``: the held-out
  probe, the whole probe when it has no split; ``train-val`` and ``train-train`` when it has
  a training split), named as the rules name their metrics; and, in pair mode,
  ``stiffness/val-val/critical_length``;
- ``probe/loss``, ``probe/accuracy`` (and ``probe/train_loss``, ``probe/train_accuracy``);
- ``rules/<rule>``: 1 when the rule says stop at this evaluation, else 0;
- ``stop/raised``: 1 from the evaluation that raised the run's stop on, else 0; written last,
  so a step that has it was written whole (``written_steps``); ``stop/reason`` (text) once;
- ``class_matrix/<pair set>``: the cosine class-stiffness matrix as an image (``heatmap``).

Undefined values (null in the store) are left out: TensorBoard has no null, and a NaN would
wreck a chart's scale. Files are named ``events.out.tfevents.*.stiffness-monitor``, so a user
may point ``tensorboard.dir`` at a folder their trainer writes to. The events are what
``SummaryWriter`` would write (its summary functions, TensorBoard's record format), written
synchronously by ``BoardWriter``; ``tensorboard`` is imported only when a run is first
written. Any failure comes out as one ``TensorBoardError``; the caller logs and counts it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import os
import socket
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.exporter.heatmap import matrix_image

SUFFIX = ".stiffness-monitor"
_COUNTER = itertools.count()  # files opened by this process: names stay unique within a second
STOP_TAG = "stop/raised"
_SUMMARIES = (
    ("within", "within_class"),
    ("between", "between_class"),
    ("within_pooled", "within_class_pooled"),
    ("between_pooled", "between_class_pooled"),
)
_PROBE = (
    ("probe_loss", "probe/loss"),
    ("probe_accuracy", "probe/accuracy"),
    ("train_probe_loss", "probe/train_loss"),
    ("train_probe_accuracy", "probe/train_accuracy"),
)

_STATISTICS = ("gradient_disparity", "gsnr", "gsnr_median", "opposing_share")


class TensorBoardError(Exception):
    """A run's events could not be written or read; the message names the folder."""


@dataclass(frozen=True)
class BoardEntry:
    """One evaluation as TensorBoard shows it. ``stop_reason`` is set at the evaluation that
    raised the stop, and only there."""

    step: int
    result: Mapping[str, Any]
    verdicts: Mapping[str, bool] = field(default_factory=dict)
    stopped: bool = False
    stop_reason: str | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def pair_sets(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each pair set's ``{"cosine": ..., "sign": ...}`` by name, ``val-val`` first."""
    sets: dict[str, Mapping[str, Any]] = {"val-val": result}
    for name, node in _mapping(result.get("pair_sets")).items():
        sets[str(name)] = _mapping(node)
    return sets


def _stiffness(name: str, node: Mapping[str, Any]) -> Iterator[tuple[str, float | None]]:
    for kind, prefix in (("cosine", ""), ("sign", "sign_")):
        values = _mapping(node.get(kind))
        for key, metric in _SUMMARIES:
            yield f"stiffness/{name}/{prefix}{metric}", _number(values.get(key))


def scalars(entry: BoardEntry) -> dict[str, float]:
    """Every scalar of the entry by tag (``STOP_TAG`` last); undefined values left out."""
    result = entry.result
    found: list[tuple[str, float | None]] = []
    for name, node in pair_sets(result).items():
        found.extend(_stiffness(name, node))
    distance = _mapping(result.get("distance"))
    found.append(("stiffness/val-val/critical_length", _number(distance.get("critical_length"))))
    found.extend((tag, _number(result.get(key))) for key, tag in _PROBE)
    statistics = _mapping(result.get("statistics"))  # the training split's, when measured
    found.extend((f"statistics/{key}", _number(statistics.get(key))) for key in _STATISTICS)
    found.extend((f"rules/{rule}", 1.0 if stop else 0.0) for rule, stop in entry.verdicts.items())
    found.append((STOP_TAG, 1.0 if entry.stopped else 0.0))
    return {tag: value for tag, value in found if value is not None}


def images(result: Mapping[str, Any]) -> dict[str, NDArray[np.uint8]]:
    """``class_matrix/<pair set>``: each pair set's cosine matrix, as (H, W, 3) RGB."""
    pictures = {}
    for name, node in pair_sets(result).items():
        matrix = _mapping(node.get("cosine")).get("matrix")
        if isinstance(matrix, list) and matrix and all(isinstance(r, list) for r in matrix):
            pictures[f"class_matrix/{name}"] = matrix_image(matrix)
    return pictures


def _event_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob(f"events.out.tfevents.*{SUFFIX}") if path.is_file())


def written_steps(folder: Path) -> set[int]:
    """The steps already written whole to ``folder`` (by any earlier daemon): those that have
    ``STOP_TAG``. A missing folder has none."""
    if not folder.is_dir():
        return set()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: set[int] = set()
    try:
        for path in _event_files(folder):
            for event in EventFileLoader(str(path)).Load():
                if any(value.tag == STOP_TAG for value in event.summary.value):
                    steps.add(int(event.step))
    except Exception as error:  # a damaged file: the caller must not guess what is in it
        raise TensorBoardError(f"{folder}: cannot read the event files ({error})") from error
    return steps


def _checked_folder(folder: Path) -> None:
    """Create ``folder`` if missing; refuse a symlink or a non-folder where it should be, as
    the stop file does: a link planted there would send our writes somewhere else."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        mode = os.lstat(folder).st_mode
    if stat.S_ISLNK(mode):
        raise TensorBoardError(f"{folder}: expected a folder, got a symlink (not followed)")
    if not stat.S_ISDIR(mode):
        raise TensorBoardError(f"{folder}: expected a folder, got another kind of file")


def encode(entry: BoardEntry) -> bytes:
    """The entry's events as TFRecords: images, the stop reason, then the scalars, so that
    ``STOP_TAG`` comes last. Summaries are built by torch's ``torch.utils.tensorboard.summary``
    (what ``SummaryWriter.add_*`` calls) and framed by TensorBoard's own ``RecordWriter``."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    build: Any = importlib.import_module("torch.utils.tensorboard.summary")  # untyped
    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    now = time.time()
    pictures = images(entry.result).items()
    summaries = [build.image(tag, picture, dataformats="HWC") for tag, picture in pictures]
    if entry.stop_reason:
        summaries.append(build.text("stop/reason", entry.stop_reason))
    summaries.extend(build.scalar(tag, value) for tag, value in scalars(entry).items())
    for summary in summaries:
        records.write(Event(wall_time=now, step=entry.step, summary=summary).SerializeToString())
    return buffer.getvalue()


def _file_header() -> bytes:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    RecordWriter(buffer).write(
        Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
    )
    return buffer.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BoardWriter:
    """One run's event file, written synchronously: ``SummaryWriter`` writes on a thread of its
    own, where a full disk kills the thread with a traceback on stderr and leaves half an entry
    behind. Here a failed entry is cut off again (the file ends on a whole entry), the file is
    closed, and the next write opens a new one; a disk that frees up heals by itself."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def write(self, entry: BoardEntry) -> None:
        """Write one entry; raises ``TensorBoardError`` (the file is then closed)."""
        try:
            data = encode(entry)
            if self._fd is None:
                self._open()
            assert self._fd is not None
            end = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                _write_all(self._fd, data)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, end)
                raise
        except Exception as error:
            self.close()
            if isinstance(error, TensorBoardError):
                raise
            raise TensorBoardError(f"{self.folder}: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        """Close the file, if one is open (the data is already with the OS)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self) -> None:
        """A new file of our own: never an existing one, never through a symlink."""
        _checked_folder(self.folder)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_COUNTER)}{SUFFIX}"
        )
        path = self.folder / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o644)
        try:
            _write_all(fd, _file_header())
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd = fd
