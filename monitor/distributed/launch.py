"""Whether this process was started by torchrun, and the process group it then joins.

torchrun (``python -m torch.distributed.run``) gives every process ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; without them the CLI behaves exactly as one process. The group's backend
follows the device: NCCL for CUDA (each rank its own GPU, ``cuda:LOCAL_RANK``), gloo for the
CPU. Its ``timeout`` bounds every collective: a rank whose peers failed or hang raises after
that long instead of waiting forever.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from monitor.errors import ConfigError, EngineError, MonitorError

DEFAULT_TIMEOUT = 600.0  # seconds; NCCL's own default, and longer than a probe's pass
#: How long ranks other than 0 wait for the daemon's next checkpoint: training runs can go a
#: long time between checkpoints. A rank 0 that dies closes the channel at once instead.
IDLE_TIMEOUT = timedelta(days=365)

Job = Mapping[str, str | None]  # what rank 0 tells the others to evaluate: path, run


class RankFailure(EngineError):
    """A collective failed: another rank failed, exited or hung. The process group cannot be
    used again; the daemon exits so that its supervisor restarts every rank."""


@dataclass(frozen=True)
class Launch:
    """This process's place among torchrun's processes."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Launch | None:
        """The launch torchrun describes in ``env``, or None when not started by torchrun."""
        if "WORLD_SIZE" not in env:
            return None
        values: dict[str, int] = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            text = env.get(name)
            if text is None or not text.strip().isdigit():
                raise ConfigError(
                    f"environment variable {name}: expected a non-negative integer as torchrun "
                    f"sets it (WORLD_SIZE is set), got {text!r}"
                )
            values[name] = int(text)
        if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
            raise ConfigError(
                f"environment variables RANK={values['RANK']}, WORLD_SIZE="
                f"{values['WORLD_SIZE']}: expected 0 <= RANK < WORLD_SIZE"
            )
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def rank_device(spec: str, launch: Launch) -> torch.device:
    """The device of this rank for ``stiffness.device`` ``spec``: each rank its own GPU.

    ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` when CUDA is available (``auto`` falls back
    to the CPU); ``cuda:N`` names one GPU for every rank, which NCCL refuses, so it is an error.
    """
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise EngineError("stiffness.device is 'cuda' but no CUDA device is available")
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise EngineError(
                f"LOCAL_RANK {launch.local_rank} has no GPU of its own: this node has {count}; "
                f"start at most {count} processes per node (torchrun --nproc_per_node)"
            )
        return torch.device("cuda", launch.local_rank)
    raise ConfigError(
        f"stiffness.device: expected auto, cuda or cpu under torchrun (each rank then uses "
        f"cuda:LOCAL_RANK or the CPU), got {spec!r}"
    )


class ProcessGroup:
    """The joined torch.distributed group, and the one collective the passes need: sums."""

    def __init__(self, launch: Launch, device: torch.device, timeout: float) -> None:
        self.rank, self.world_size = launch.rank, launch.world_size
        self.device, self.timeout = device, timeout
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self._control: dist.ProcessGroup | None = None  # the daemon's channel (``control``)
        self.broken = False  # a collective failed: the group must not be used, nor waited on

    @classmethod
    @contextmanager
    def join(
        cls,
        launch: Launch,
        device_spec: str,
        timeout: float = DEFAULT_TIMEOUT,
        control: bool = False,
    ) -> Iterator[ProcessGroup]:
        """Join torchrun's group for the ``with`` block; leave it afterwards, even on error.
        ``control`` adds the daemon's channel (``announce``/``next_job``)."""
        if timeout <= 0:
            raise ConfigError(f"--timeout: expected a positive number of seconds, got {timeout}")
        device = rank_device(device_spec, launch)
        group = cls(launch, device, timeout)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with group.collective("joining the process group"):
            dist.init_process_group(
                group.backend,
                timeout=timedelta(seconds=timeout),
                device_id=device if device.type == "cuda" else None,
            )
            if control:
                group._control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        try:
            yield group
        except MonitorError as error:  # printed by every rank that meets it: say which
            if not isinstance(error, RankFailure):
                error.args = (f"rank {group.rank} of {group.world_size}: {error}",)
            raise
        finally:
            # An FSDP2-sharded model (``--split fsdp``) still alive at interpreter exit aborts
            # the process half the time ("terminate called without an active exception",
            # torch 2.13, gloo); its reference cycles are collected here, while torch is whole.
            gc.collect()
            if not group.broken:  # tearing down a group with a failed operation can block
                dist.destroy_process_group()

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective into one error that says what happened."""
        try:
            yield
        except RuntimeError as error:  # DistBackendError, DistNetworkError, gloo's own
            self.broken = True
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise RankFailure(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank failed, "
                f"exited or did not answer within the {self.timeout:g} s timeout ({first})"
            ) from error

    def sum_(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (NCCL's copy goes through the GPU)."""
        on_device = self.backend == "gloo" or tensor.device.type == "cuda"
        buffer = tensor if on_device else tensor.to(self.device)
        if buffer.dtype == torch.bool:
            raise TypeError("sum a bool tensor as an integer one")
        with self.collective(f"summing {what} over the ranks"):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        if buffer is not tensor:
            tensor.copy_(buffer)
        return tensor

    def announce(self, job: Job | None) -> None:
        """Rank 0: tell the other ranks which checkpoint to evaluate next (None: stop)."""
        self._broadcast(json.dumps(job).encode(), "announcing the next checkpoint")

    def next_job(self) -> Job | None:
        """Other ranks: wait for rank 0's next checkpoint (None: stop)."""
        job: Job | None = json.loads(self._broadcast(b"", "waiting for rank 0's next checkpoint"))
        return job

    def _broadcast(self, data: bytes, what: str) -> bytes:
        """Rank 0's ``data`` on every rank, as JSON bytes (no pickle between processes)."""
        if self._control is None:
            raise RuntimeError("join the group with control=True to announce checkpoints")
        size = torch.tensor([len(data)], dtype=torch.int64)
        with self.collective(what):
            self._broadcast_tensor(size)
            if self.rank == 0:
                buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                buffer = torch.empty(int(size.item()), dtype=torch.uint8)
            self._broadcast_tensor(buffer)
        return bytes(buffer.tolist())

    def _broadcast_tensor(self, tensor: torch.Tensor) -> None:
        """The others wait as long as training takes; rank 0 only ``timeout`` for them."""
        work = dist.broadcast(tensor, src=0, group=self._control, async_op=True)
        if self.rank == 0:
            work.wait(timedelta(seconds=self.timeout))
        else:
            work.wait()


@contextmanager
def no_retry() -> Iterator[None]:
    """Out of memory once the ranks have begun exchanging sums is an error, not a retry: the
    engine would restart the pass on this rank alone, and its collectives would no longer
    match the other ranks'."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise EngineError(
            "out of memory after the ranks began summing their parts (the engine cannot retry "
            "one rank alone): lower stiffness.batch_size or stiffness.memory_limit"
        ) from error
