"""The stop signal, trainer side: read the stop file the monitor writes. Standard library only.

A training script imports this module, so it must not pull torch (or anything else) in at
import time: it runs inside the trainer's environment, whatever that has installed. Only
:func:`should_stop_distributed` touches torch, and only when the trainer has already imported
``torch.distributed`` and initialised a process group.

The monitor writes the stop file atomically (temporary file, then rename; see
``monitor.stopping.stop_file``), so a reader sees no file or a complete one. Anything else at
that path (an empty file, a half-written one from another tool, a directory, non-JSON) reads
as "no stop", never as an exception: a training loop must not crash because of a stray file. A stop
written by hand must therefore be a JSON object too, e.g.
``echo '{"reason": "manual"}' > STOP.tmp && mv STOP.tmp STOP``. The monitor never retracts a
stop, but a stop file written before the trainer started is the stop of an earlier run into the
same folder: ``StopFilePoller`` and the callbacks ignore it (``since``). To resume a stopped
run *as the same attempt*, delete the file; a rerun is a new attempt of its own.

Plain loop::

    from monitor.stopping.trainer import StopFilePoller

    stop = StopFilePoller("/checkpoints/run-a/STOP", interval=5.0)
    for step, batch in enumerate(loader):
        ...
        if stop():
            print("stiffness-monitor:", stop.info.get("reason"))
            break

Several ranks (torch.distributed): every rank must leave the loop at the same step, or the
ones that stay hang in their next collective. Use ``StopFilePoller(path, every_n_calls=50,
distributed=True)``: rank 0 reads the file and every rank gets its answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "StopFilePoller",
    "best_checkpoint",
    "read_stop",
    "read_stop_distributed",
    "should_stop",
    "should_stop_distributed",
]

#: A stop file is a few hundred bytes; anything larger is not one and is not read whole.
MAX_STOP_FILE_BYTES = 1 << 20
#: The best-checkpoint file's name in the run folder (``stop.best_file``'s default).
BEST_FILE_NAME = "best_checkpoint.json"
#: Seconds a stop file may predate ``since`` and still count: file times come from a coarser
#: clock than ``time.time()``, and from the file server's clock on shared storage.
STALE_MARGIN = 2.0


def read_stop(path: str | os.PathLike[str], since: float | None = None) -> dict[str, Any] | None:
    """The stop file's JSON object, or None if there is no valid stop file at ``path``.

    Never raises for what is (or is not) at the path: missing, unreadable, partial, too large
    or non-object content all give None. With ``since`` (a ``time.time()``), a file last
    written before then (by more than ``STALE_MARGIN``) is None too: it is the stop of an
    earlier run into the same folder, not of this one (the file's modification time is
    compared, so the clocks of the trainer's and the monitor's machines must agree, as NTP
    keeps them).
    """
    try:
        with open(path, "rb") as handle:
            if since is not None and os.fstat(handle.fileno()).st_mtime < since - STALE_MARGIN:
                return None
            raw = handle.read(MAX_STOP_FILE_BYTES + 1)
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return None
    if len(raw) > MAX_STOP_FILE_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError too
        return None
    return data if isinstance(data, dict) else None


def should_stop(path: str | os.PathLike[str], since: float | None = None) -> bool:
    """True when a valid stop file exists at ``path`` (see :func:`read_stop`)."""
    return read_stop(path, since) is not None


def best_checkpoint(
    run_dir: str | os.PathLike[str], name: str = BEST_FILE_NAME, since: float | None = None
) -> dict[str, Any] | None:
    """The best checkpoint the monitor has seen in the run's current attempt, or None.

    A dict with ``path``, ``step``, ``value``, ``metric`` and ``mode`` (and ``run``,
    ``attempt``), read from the file the daemon keeps at ``{run_dir}/best_checkpoint.json``
    (``stop.best_file``; pass ``name`` when it is elsewhere in the folder). ``since`` works as
    in :func:`read_stop`. None when there is no such file yet or it names no path.
    """
    info = read_stop(os.path.join(os.fspath(run_dir), name), since)
    return info if info is not None and isinstance(info.get("path"), str) else None


def should_stop_distributed(
    path: str | os.PathLike[str], group: Any = None, device: Any = None
) -> bool:
    """The same answer on every rank: rank 0 of ``group`` reads the file, all ranks learn it.

    Every rank of the group must call this at the same point (it is a collective: a 0/1 tensor
    all-reduced with MAX), exactly as with any other collective. When torch.distributed has not
    been imported and initialised, it is plain :func:`should_stop` (this never imports torch).
    ``device`` is where the flag tensor lives: by default the current CUDA device for NCCL, the
    CPU otherwise.
    """
    return read_stop_distributed(path, group, device)[0]


def read_stop_distributed(
    path: str | os.PathLike[str], group: Any = None, device: Any = None, since: float | None = None
) -> tuple[bool, dict[str, Any] | None]:
    """:func:`should_stop_distributed`, plus the file's content where this rank read it.

    The content is None on every rank but rank 0 (and on rank 0 when there is no stop).
    """
    # A process group exists only if the trainer imported torch.distributed: look, don't import
    # (importing torch costs seconds and this module promises not to need it).
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        info = read_stop(path, since)
        return info is not None, info
    import torch

    info = read_stop(path, since) if dist.get_rank(group) == 0 else None
    if device is None:
        nccl = dist.get_backend(group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"
    flag = torch.tensor([0 if info is None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item()), info


class _Now:
    """The default ``since`` of a poller: the moment it is made."""


NOW = _Now()


class StopFilePoller:
    """Cheap to call every step: ``poller()`` is True once a stop file has been seen.

    Time-based by default: the file is read at most once every ``interval`` seconds (the first
    call always reads). With ``every_n_calls`` it is read on every n-th call instead (the first
    included). Once a stop has been seen the answer stays True and ``info`` holds the file's
    content (None with ``distributed`` on ranks other than 0, which never read it).

    ``distributed=True`` uses :func:`should_stop_distributed` and requires ``every_n_calls``:
    the ranks' clocks differ, so a time-based poller would make them enter the collective at
    different calls and hang.

    A stop file written before the poller was made is ignored (``since``, by default the
    poller's creation time): it is the stop of an earlier run into the same folder. Pass
    ``since=None`` to honour any stop file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        interval: float = 5.0,
        *,
        every_n_calls: int | None = None,
        distributed: bool = False,
        clock: Callable[[], float] = time.monotonic,
        since: float | _Now | None = NOW,
    ) -> None:
        if interval < 0:
            raise ValueError(f"expected interval >= 0 seconds, got {interval}")
        if every_n_calls is not None and every_n_calls < 1:
            raise ValueError(f"expected every_n_calls >= 1, got {every_n_calls}")
        if distributed and every_n_calls is None:
            raise ValueError(
                "distributed polling needs every_n_calls: a time-based interval would make "
                "ranks join the collective at different steps and hang"
            )
        self.path = path
        self.since: float | None = time.time() if isinstance(since, _Now) else since
        self.interval = interval
        self.every_n_calls = every_n_calls
        self.distributed = distributed
        self.info: dict[str, Any] | None = None
        self.stopped = False
        self._clock = clock
        self._calls = 0
        self._last_check: float | None = None

    def __call__(self) -> bool:
        if self.stopped:
            return True
        self._calls += 1
        if not self._due():
            return False
        if self.distributed:
            self.stopped, self.info = read_stop_distributed(self.path, since=self.since)
        else:
            self.info = read_stop(self.path, self.since)
            self.stopped = self.info is not None
        return self.stopped

    def _due(self) -> bool:
        if self.every_n_calls is not None:
            return (self._calls - 1) % self.every_n_calls == 0
        now = self._clock()
        if self._last_check is not None and now - self._last_check < self.interval:
            return False
        self._last_check = now
        return True
