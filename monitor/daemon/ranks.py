"""``watch`` under torchrun: rank 0 is the daemon, the other ranks evaluate with it.

Rank 0 alone watches, decides, serves metrics, writes the store and the stop file. Before
each evaluation it announces the checkpoint (path and run) on the group's control channel;
every other rank waits there, evaluates the same checkpoint with it (the engine's collectives
pair them up) and waits again. When rank 0 stops it announces None and the others return.

A rank that fails, exits or hangs makes the next collective fail, at once or after
``--timeout``: the evaluation is not recorded (the checkpoint is not to blame), and rank 0
exits with 1, saying so, since the group cannot be used again: torchrun (``--max-restarts``)
or the pod's supervisor restarts every rank, and the daemon resumes from its store. SIGTERM
(torchrun passes it to every rank) stops rank 0 as it stops one daemon; the others end with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from monitor.config.schema import MonitorConfig
from monitor.daemon.loop import Daemon
from monitor.distributed.engine import DistributedEngine, Split
from monitor.distributed.launch import Launch, ProcessGroup, RankFailure
from monitor.errors import MonitorError
from monitor.evaluation.evaluator import Evaluation, Evaluator

log = logging.getLogger("monitor.daemon")


class LeaderEvaluator(Evaluator):
    """Rank 0's evaluator: announces each checkpoint to the other ranks, then evaluates it."""

    def __init__(self, config: MonitorConfig, group: ProcessGroup, split: Split) -> None:
        super().__init__(config, group.device, DistributedEngine(group, split))
        self.group = group

    def evaluate(self, path: str | Path, run: str | None = None) -> Evaluation:
        self.group.announce({"path": str(path), "run": run})
        return super().evaluate(path, run)


def follow(config: MonitorConfig, group: ProcessGroup, split: Split) -> int:
    """A rank other than 0: evaluate what rank 0 announces until it says stop (exit code)."""
    evaluator = Evaluator(config, group.device, DistributedEngine(group, split))
    try:
        while (job := group.next_job()) is not None:
            try:
                evaluator.evaluate(str(job["path"]), run=job["run"])
            except RankFailure:
                raise
            except MonitorError as error:  # rank 0 meets it too, and records it
                log.warning("rank %d: %s", group.rank, error)
    except RankFailure as error:
        log.error("%s", error)
        return 1
    return 0


def _leave(group: ProcessGroup, code: int) -> int:
    """``code``; but after a failed collective, exit now: a gloo operation still pending
    (rank 0's announcement to a hung rank) would block the process's exit for as long as
    the control channel's timeout."""
    if group.broken:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def watch(config: MonitorConfig, split: Split, timeout: float) -> int:
    """The daemon, on every rank torchrun started, or in this one process without torchrun."""
    launch = Launch.from_env()
    if launch is None or launch.world_size == 1:
        return Daemon(config).run()
    with ProcessGroup.join(launch, config.stiffness.device, timeout, control=True) as group:
        if launch.rank != 0:
            return _leave(group, follow(config, group, split))
        try:
            code = Daemon(config, evaluator=lambda c: LeaderEvaluator(c, group, split)).run()
        finally:
            if not group.broken:
                with contextlib.suppress(RankFailure):  # the others are gone already
                    group.announce(None)
        return _leave(group, code)
