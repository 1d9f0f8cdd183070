"""Every checkpoint reader, fuzzed (issue 19, item 10): bad bytes get a ``CheckpointError``.

Real files of each format are written once per session by the real libraries
(``tests/checkpoint_writers.py``); hypothesis then replaces one file of each with random
bytes, a truncated copy, or a copy with bits flipped, and reads it with ``read_checkpoint``.
Each case must either load or raise ``monitor.errors.CheckpointError``: never another
exception, never a crash, within a time bound per case (an interval timer interrupts a
reader that stalls) and a memory bound over the whole run (peak RSS growth). Example counts
are modest so that the file runs in about a minute on two cores; ``FUZZ_EXAMPLES`` raises
them for a longer hunt.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError
from tests import checkpoint_writers as writers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:.*torch.jit.*deprecated:DeprecationWarning",
        "ignore:torch.distributed is disabled:UserWarning",
    ),
]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
HUNTING = "FUZZ_EXAMPLES" in os.environ  # new random cases each run, rather than CI's fixed set
#: Seconds one read may take. Real reads of these small files take milliseconds (an export
#: archive up to a second); the bound is generous for a loaded machine, and a read that
#: stalls is interrupted at it instead of hanging the suite.
SECONDS = 30
#: Growth of the test process's peak RSS over every case of one format. The files are a few
#: kB: a reader that believed a corrupted size field and allocated it would exceed this.
MEMORY = 512 << 20


@dataclass(frozen=True)
class Target:
    """One file of a real checkpoint to corrupt: ``member`` within the folder ``writer``
    makes (``""``: the checkpoint is that file itself)."""

    writer: Callable[[Path, writers.Net], Path]
    member: str = ""


TARGETS = {
    "state_dict": Target(writers.write_model_state_dict),
    "legacy-state_dict": Target(writers.write_legacy),
    "lightning": Target(writers.write_lightning),
    "safetensors": Target(writers.write_safetensors),
    "hf-index": Target(writers.write_hf_sharded_safetensors, "model.safetensors.index.json"),
    "hf-shard": Target(writers.write_hf_sharded_safetensors, "model-00001-of-00002.safetensors"),
    "hf-bin": Target(writers.write_hf_bin, "pytorch_model.bin"),
    "dcp-metadata": Target(writers.write_dcp, ".metadata"),
    "dcp-data": Target(writers.write_dcp, "__0_0.distcp"),
    "torchscript": Target(writers.write_torchscript),
    "export": Target(writers.write_export),
}


@pytest.fixture(scope="session")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each target's checkpoint, written once; tests copy it and corrupt the copy."""
    net = writers.trained_net()
    written = {}
    for name, target in TARGETS.items():
        written[name] = target.writer(tmp_path_factory.mktemp(name), net)
        read_checkpoint(written[name], CheckpointConfig())  # the uncorrupted file loads
    return written


class TookTooLong(Exception):
    """Raised in a reader by the interval timer: the read passed ``SECONDS``."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise TookTooLong(f"a read took over {SECONDS} s")


@pytest.fixture
def time_bound() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _interrupt)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


Mutation = Callable[[bytes], bytes]


def _replace_with(data: bytes) -> Mutation:
    return lambda original: data


def _truncate_at(fraction: float) -> Mutation:
    return lambda original: original[: int(len(original) * fraction)]


def _flip(bits: list[tuple[float, int]]) -> Mutation:
    def apply(original: bytes) -> bytes:
        data = bytearray(original)
        for where, bit in bits:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
        return bytes(data)

    return apply


MUTATIONS = st.one_of(
    st.binary(max_size=2048).map(_replace_with),
    st.floats(0.0, 1.0, exclude_max=True).map(_truncate_at),
    st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8
    ).map(_flip),
)


def read_corrupted(original: Path, member: str, mutate: Mutation) -> None:
    """Copy the checkpoint, corrupt the copy's ``member``, read it: load or CheckpointError."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / original.name
        if original.is_dir():
            shutil.copytree(original, copy)
        else:
            shutil.copy(original, copy)
        file = copy / member if member else copy
        file.write_bytes(mutate(file.read_bytes()))
        signal.setitimer(signal.ITIMER_REAL, SECONDS)
        try:
            read_checkpoint(copy, CheckpointConfig())
        except CheckpointError as error:
            assert str(copy) in str(error), error  # every message names the checkpoint
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.mark.parametrize("name", TARGETS)
def test_corrupted_checkpoints_load_or_raise_checkpoint_error(
    name: str, originals: dict[str, Path], time_bound: None
) -> None:
    before = _peak_rss()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # the interval timer bounds each read; hypothesis would only report
        derandomize=not HUNTING,  # the same cases in every CI run
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(mutate=MUTATIONS)
    def fuzz(mutate: Mutation) -> None:
        read_corrupted(originals[name], TARGETS[name].member, mutate)

    fuzz()
    grown = _peak_rss() - before
    assert grown < MEMORY, f"{name}: peak RSS grew {grown >> 20} MiB over the cases"
    assert time.monotonic() - started < SECONDS * EXAMPLES
