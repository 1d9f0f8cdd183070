"""Checkpoints as an attacker writes them (issue 19, items 1, 6 and 10): nothing in a
checkpoint folder runs code, changes the daemon's process, crashes it or stalls it.

- A DCP ``.metadata`` that BUILDs on ``pathlib.PosixPath`` used to set ``__truediv__`` on the
  class in the reading process: every path join then raised (the daemon's watcher died).
  Here the real CLI evaluates such a checkpoint and the same process then joins paths.
- A ``torch.save`` pickle that is code-free (what weights-only loading allows) can still be
  a dict keyed by a tuple nested 200 000 deep (the process dies of SIGSEGV while hashing it)
  or by 40 levels of shared tuples (a kB that hashes for hours); a DCP index can point DCP
  at a FIFO (a read that never returns), outside its folder, or at a terabyte tensor. Each
  is read in a fresh interpreter, so that a regression fails the test and not the suite.
- The attacks that already held stay held: a pickle that calls ``os.system`` is refused
  with reason ``pickle`` and the command never runs; truncated, empty, random and sparse
  terabyte files of every format fail as ``corrupt`` at once, without reading the file.
- A Hugging Face folder missing a shard its index names is ``corrupt``, not ``deleted``.
"""

from __future__ import annotations

import os
import pickle
import random
import resource
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo

from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.daemon.outcomes import error_reason
from monitor.errors import CheckpointError
from tests import checkpoint_writers as writers
from tests.checkpoints import crafted as c
from tests.conftest import REPO
from tests.daemon_harness import build_mlp, make_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:.*torch.jit.*deprecated:DeprecationWarning",
        "ignore:torch.distributed is disabled:UserWarning",
    ),
]

#: Address space for a reading subprocess: torch needs well under this.
MEMORY_LIMIT = 4 << 30
#: Seconds for a subprocess: Python and torch start in a few (more on a loaded machine); the
#: reads themselves take milliseconds. A crash ends it early, a stall runs into the limit.
SUBPROCESS_SECONDS = 300
#: Seconds to refuse one bad file in process; reading a sparse terabyte would take minutes.
SECONDS = 30.0
TERABYTE = 1 << 40


def run_python(code: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` from the repository, under the memory and time limits."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=SUBPROCESS_SECONDS,
        preexec_fn=limit_memory,
        check=False,
    )


def reason_of(path: Path, **config: bool) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, CheckpointConfig(**config))
    assert str(path) in str(info.value)
    return info.value.reason


# --- item 1: the DCP index cannot reconfigure the process -------------------------------------

EVALUATE_THEN_JOIN = """
import pathlib, sys
from monitor.cli import main
config, clean, crafted = sys.argv[1:]
codes = [main(["evaluate", "-c", config, clean]), main(["evaluate", "-c", config, crafted])]
print("exit codes", *codes)
print("joined", pathlib.PosixPath("/runs") / "step_9")
print("class changed", "__truediv__" in vars(pathlib.PosixPath))
"""


def test_dcp_metadata_cannot_reconfigure_the_process(tmp_path: Path) -> None:
    """The CLI evaluates a real DCP checkpoint, then the same one with a BUILD on the
    ``PosixPath`` class in front of its index; afterwards the process still joins paths."""
    config = make_config(tmp_path / "config", {"run": tmp_path / "runs"})
    torch.manual_seed(0)
    clean = tmp_path / "runs" / "step_9"
    dcp.save(dict(build_mlp(hidden=64).state_dict()), checkpoint_id=clean)
    crafted = tmp_path / "runs" / "step_10"
    dcp.save(dict(build_mlp(hidden=64).state_dict()), checkpoint_id=crafted)
    metadata = crafted / ".metadata"
    metadata.write_bytes(c.injected(c.BREAK_PATH_JOINS, metadata.read_bytes()))

    done = run_python(EVALUATE_THEN_JOIN, config, clean, crafted)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "exit codes 0 1" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "joined /runs/step_9" in done.stdout and "class changed False" in done.stdout
    assert f"{crafted}: .metadata: needs full unpickling" in done.stderr
    assert "refused BUILD on the class pathlib.PosixPath" in done.stderr


# --- bombs: a crash or a stall for whoever reads them, unless refused ---------------------------

READ_EACH = """
import sys
from pathlib import Path
from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError
for case in sys.argv[1:]:
    name, path = case.split("=", 1)
    print(name, "reading", flush=True)
    try:
        read_checkpoint(Path(path), CheckpointConfig())
        print(name, "-> loaded", flush=True)
    except CheckpointError as error:
        print(name, "->", error.reason, error, flush=True)
"""


def _dcp_with_slice(folder: Path, name: str, data: bytes | None, relative: str = "") -> Path:
    """A real DCP checkpoint whose ``step`` value is read from ``data`` (appended to its
    data file) or from the file ``relative`` names, by rewriting the index as DCP writes it."""
    path = writers.write_dcp(folder, writers.trained_net())
    metadata = pickle.loads((path / ".metadata").read_bytes())
    (index,) = [key for key in metadata.storage_data if key.fqn == "step"]
    real = metadata.storage_data[index]
    if data is not None:
        shard = path / real.relative_path
        offset = shard.stat().st_size
        with shard.open("ab") as handle:
            handle.write(data)
        metadata.storage_data[index] = _StorageInfo(real.relative_path, offset, len(data))
    else:
        metadata.storage_data[index] = _StorageInfo(relative, 0, 1 << 20)
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    path.rename(folder / name)
    return folder / name


def _dcp_claiming(folder: Path, elements: int) -> Path:
    """A real DCP checkpoint whose index says a weight has ``elements`` elements."""
    path = writers.write_dcp_flat(folder, writers.trained_net())
    metadata = pickle.loads((path / ".metadata").read_bytes())
    entry = metadata.state_dict_metadata["head.bias"]
    entry.size = torch.Size([elements])
    entry.chunks[0].sizes = torch.Size([elements])
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    return path


def _bombs(folder: Path) -> dict[str, Path]:
    """Each bomb where a trainer's checkpoint could carry it, by name."""
    for sub in ("a", "b", "c", "d", "hf-bin", "ts"):
        (folder / sub).mkdir()
    deep = c.torch_save_with(c.deep_tuple_key(200_000))
    shared = c.torch_save_with(c.shared_tuple_key(40))
    scripted = writers.write_torchscript(folder / "ts", writers.trained_net()).read_bytes()
    files = {
        "deep-tuple-key.pt": deep,
        "shared-tuple-key.pt": shared,
        "deep-tuple-key-legacy.pt": c.deep_tuple_key(200_000),
        "hf-bin/pytorch_model.bin": deep,
        "deep-dicts.pt": c.torch_save_with(c.deep_dicts(5000)),
        "cyclic-dict.pt": c.torch_save_with(c.cyclic_dict()),
        "shared-dicts.pt": c.torch_save_with(c.shared_dicts(40)),
        "torchscript-deep.pt": c.torchscript_with(c.deep_dicts(200_000), scripted),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    fifo = _dcp_with_slice(folder / "a", "dcp-fifo", None, "waiting.distcp")
    os.mkfifo(fifo / "waiting.distcp")
    os.mkfifo(folder / "fifo.pt")
    return {
        **{name: folder / name for name in files if "/" not in name},
        "hf-bin": folder / "hf-bin",
        "fifo.pt": folder / "fifo.pt",
        "dcp-slice": _dcp_with_slice(folder / "b", "dcp-slice", shared),
        "dcp-fifo": fifo,
        "dcp-outside": _dcp_with_slice(folder / "c", "dcp-outside", None, "../../x.distcp"),
        "dcp-terabyte-tensor": _dcp_claiming(folder / "d", 1 << 40),
    }


def test_bombs_neither_crash_nor_stall_the_reader(tmp_path: Path) -> None:
    """Each read in one fresh interpreter. Before the fix the tuple keys died of SIGSEGV or
    hashed for hours; the nested and cyclic dicts raised RecursionError, the shared ones
    were walked 2**40 times; TorchScript died of SIGSEGV; a FIFO (as a file, or as a DCP
    data file) blocked forever; DCP asked for a 4 TB tensor (RuntimeError)."""
    cases = _bombs(tmp_path)
    started = time.monotonic()

    done = run_python(READ_EACH, *(f"{name}={path}" for name, path in cases.items()))

    report = done.stdout + done.stderr[-2000:]
    assert done.returncode == 0, (
        f"exit {done.returncode} after {time.monotonic() - started:.0f}s: {report}"
    )
    for name, path in cases.items():
        reason = "format" if name == "fifo.pt" else "corrupt"
        assert f"{name} -> {reason} {path}: " in done.stdout, report
    assert "nested over" in done.stdout and "hashing its keys" in done.stdout
    assert "nested values of over" in done.stdout  # the shared dicts, walked
    assert "waiting.distcp is missing" in done.stdout  # a FIFO is not a data file
    assert "outside the folder" in done.stdout and "claims" in done.stdout


# --- attacks that already held: code, and files that are not checkpoints ----------------------


class RunsACommand:
    """What ``pickle`` calls on load: ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (self.command,))


def _pickled_command(folder: Path, kind: str, marker: Path) -> Path:
    payload = {"model": writers.trained_net().state_dict(), "hook": RunsACommand(f"touch {marker}")}
    if kind == "torch.save":
        path = folder / "model.pt"
        torch.save(payload, path)
    elif kind == "lightning":
        path = folder / "epoch=1-step=10.ckpt"
        torch.save({**payload, "pytorch-lightning_version": "2.4.0", "global_step": 10}, path)
    elif kind == "hf-bin":
        path = folder / "hf"
        path.mkdir()
        torch.save(payload, path / "pytorch_model.bin")
    elif kind == "dcp-metadata":
        path = writers.write_dcp(folder, writers.trained_net())
        command = c.reduce(c.global_("posix", "system"), c.text(f"touch {marker}"))
        (path / ".metadata").write_bytes(c.injected(command, (path / ".metadata").read_bytes()))
    else:
        path = writers.write_export(folder, writers.trained_net())
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("program/data/constants/hook", pickle.dumps(payload["hook"]))
    return path


@pytest.mark.parametrize("kind", ["torch.save", "lightning", "hf-bin", "dcp-metadata", "export"])
def test_pickle_that_runs_a_command_is_refused_and_never_runs(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "the-command-ran"
    path = _pickled_command(tmp_path, kind, marker)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, CheckpointConfig())
    assert info.value.reason == "pickle", info.value
    assert "system" in str(info.value) and "checkpoint.allow_pickle: true" in str(info.value)
    assert not marker.exists()


FORMATS: dict[str, tuple[Callable[[Path, writers.Net], Path], str]] = {
    "state_dict": (writers.write_model_state_dict, ""),
    "lightning": (writers.write_lightning, ""),
    "safetensors": (writers.write_safetensors, ""),
    "torchscript": (writers.write_torchscript, ""),
    "export": (writers.write_export, ""),
    "hf-safetensors": (writers.write_hf_safetensors, "model.safetensors"),
    "hf-bin": (writers.write_hf_bin, "pytorch_model.bin"),
    "dcp-metadata": (writers.write_dcp, ".metadata"),
    "dcp-data": (writers.write_dcp, "__0_0.distcp"),
}
BAD = {
    "zero-length": lambda file: file.write_bytes(b""),
    "truncated": lambda file: file.write_bytes(file.read_bytes()[: file.stat().st_size // 2]),
    "random": lambda file: file.write_bytes(random.Random(file.name).randbytes(4096)),
    "sparse-terabyte": lambda file: (file.write_bytes(b""), os.truncate(file, TERABYTE)),
}


@pytest.mark.parametrize("bad", BAD, ids=BAD)
@pytest.mark.parametrize("fmt", FORMATS, ids=FORMATS)
def test_bad_files_fail_fast_without_being_read(fmt: str, bad: str, tmp_path: Path) -> None:
    writer, member = FORMATS[fmt]
    path = writer(tmp_path, writers.trained_net())
    file = path / member if member else path
    BAD[bad](file)
    if bad == "sparse-terabyte" and file.stat().st_blocks > 8:
        pytest.skip("this filesystem has no sparse files")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    assert reason_of(path) == "corrupt"
    assert time.monotonic() - started < SECONDS
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 256 << 10  # kB


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_a_length_field_cannot_make_torchscript_allocate_gigabytes(
    member: str, tmp_path: Path
) -> None:
    """Found by fuzzing: one flipped bit in a TorchScript pickle's string length, and
    TorchScript's C++ unpickler allocated and filled 2 GB before finding the data short."""
    scripted = writers.write_torchscript(tmp_path, writers.trained_net()).read_bytes()
    path = tmp_path / "long-string.pt"
    path.write_bytes(c.torchscript_with(c.huge_string(), scripted, member))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert reason_of(path) == "corrupt"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 256 << 10  # kB


# --- item 6: a shard missing from its index ----------------------------------------------------


@pytest.mark.parametrize(
    "writer", [writers.write_hf_sharded_safetensors, writers.write_hf_sharded_bin]
)
def test_hf_folder_missing_a_shard_is_corrupt_not_deleted(
    writer: Callable[[Path, writers.Net], Path], tmp_path: Path
) -> None:
    path = writer(tmp_path, writers.trained_net())
    shard = sorted(path.glob("*-00002-of-00002.*"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, CheckpointConfig())
    assert info.value.reason == "corrupt" and shard.name in str(info.value)
    assert error_reason(info.value) == "corrupt"  # what the daemon counts and stores
