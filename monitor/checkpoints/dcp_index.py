"""DCP's ``.metadata`` index: read without running or changing anything, then checked.

``read_metadata`` unpickles the index with ``dcp_unpickler`` (plain ``pickle`` only when the
operator trusts the checkpoint) and checks that it has the shape DCP's planner will walk.
``check_storage`` then checks what the index points to before DCP reads a byte: every data
file is a plain file in the folder, every slice lies inside it, the tensors claimed fit in
the bytes there, and every slice's pickle is one the weights-only unpickler can load at a
bounded cost (``pickle_scan``). A crafted index thus gets a ``CheckpointError``, not a read
of ``/dev/zero``, a FIFO that never answers, or a terabyte ``torch.empty``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import torch

from monitor.checkpoints.dcp_allowed import Refused
from monitor.checkpoints.dcp_unpickler import MetadataUnpickler
from monitor.checkpoints.payload import CORRUPT_ERRORS, fail, os_failure, short
from monitor.checkpoints.pickle_scan import scan_torch_save
from monitor.checkpoints.pickles import pickle_globals, pickle_refusal, refused_global

METADATA_LIMIT = 1 << 30  # bytes of .metadata; DCP writes about 200 per tensor chunk


def read_metadata(path: Path, allow_pickle: bool) -> Any:
    """The checkpoint's ``Metadata``; ``.metadata`` is written last, so no file means the save
    is still running or died before finishing."""
    file = path / ".metadata"
    if not file.is_file():
        raise fail(
            path,
            "incomplete DCP checkpoint: no .metadata file (dcp.save writes it last; the save "
            "is still running or did not finish)",
            "corrupt",
        )
    try:
        size = file.stat().st_size
        if size > METADATA_LIMIT:
            message = f".metadata is {size} bytes, over the {METADATA_LIMIT} read"
            raise fail(path, message, "corrupt")
        with file.open("rb") as handle:  # plain pickle only if the operator trusts the file
            unpickler = pickle.Unpickler(handle) if allow_pickle else MetadataUnpickler(handle)
            metadata = unpickler.load()
    except pickle.UnpicklingError as exc:
        refused = exc.what if isinstance(exc, Refused) else refused_global(str(exc))
        if refused is not None and not allow_pickle and _complete_pickle(file):
            kind = "" if isinstance(exc, Refused) else "global "
            raise pickle_refusal(path, refused, ".metadata: ", kind=kind) from exc
        raise fail(path, f".metadata is corrupt ({short(exc)})", "corrupt") from exc
    except (*CORRUPT_ERRORS, AttributeError, ImportError) as exc:
        raise fail(path, f".metadata is corrupt ({short(exc)})", "corrupt") from exc
    except OSError as exc:
        raise os_failure(path, exc, ".metadata: ") from exc
    _check_structure(metadata, path, size)
    return metadata


def _complete_pickle(file: Path) -> bool:
    """Whether a refused ``.metadata`` is a whole pickle that asks for more than DCP writes
    (reason ``pickle``) rather than damaged bytes that happened to spell a refused opcode."""
    try:
        return pickle_globals(file.read_bytes()) is not None
    except OSError:
        return False


def _chunks(entries: Iterable[Any]) -> int:
    return sum(
        len(chunks) for item in entries if type(chunks := getattr(item, "chunks", 0)) is list
    )


def _check_structure(metadata: Any, path: Path, size: int) -> None:
    """The fields DCP's planner and storage reader use, with the types ``dcp.save`` writes.

    Every chunk ``dcp.save`` writes takes bytes of its own in the file; a list of chunks
    shared between tensors (which pickle's memo allows) would make DCP's planner multiply
    them, so more chunks than bytes is corrupt.
    """
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    problem = None
    if not isinstance(metadata, Metadata):
        problem = "is not DCP metadata"
    elif type(getattr(metadata, "state_dict_metadata", None)) is not dict:
        problem = "has no state_dict_metadata dict"
    elif not all(type(fqn) is str for fqn in metadata.state_dict_metadata):
        problem = "names a value by other than a string"
    elif not isinstance(getattr(metadata, "planner_data", None), (dict, type(None))):
        problem = "has a planner_data that is not a dict"
    elif not isinstance(getattr(metadata, "storage_data", None), dict):
        problem = "has no storage_data dict"
    elif not isinstance(getattr(metadata, "storage_meta", None), (StorageMeta, type(None))):
        problem = "has a storage_meta that is not DCP's StorageMeta"
    elif _chunks(metadata.state_dict_metadata.values()) > size:
        problem = "lists more tensor chunks than it has bytes (shared lists)"
    if problem is not None:
        raise fail(path, f".metadata {problem}", "corrupt")


def tensor_entry(item: Any) -> tuple[torch.Size, torch.dtype] | None:
    """Shape and dtype of a saved tensor, None for a saved (pickled) value.

    A tensor entry's chunks must tile index space the way DCP writes them: one offset and
    one size per dimension, each a ``torch.Size``; otherwise it is corrupt (ValueError).
    """
    size = getattr(item, "size", None)
    dtype = getattr(getattr(item, "properties", None), "dtype", None)
    if not isinstance(size, torch.Size) or not isinstance(dtype, torch.dtype):
        return None
    chunks = getattr(item, "chunks", None)
    if type(chunks) is not list:
        raise ValueError("a tensor entry without a list of chunks")
    for chunk in chunks:
        offsets = getattr(chunk, "offsets", None)
        sizes = getattr(chunk, "sizes", None)
        if not (isinstance(offsets, torch.Size) and isinstance(sizes, torch.Size)):
            raise ValueError("a chunk without offsets and sizes")
        if not len(offsets) == len(sizes) == len(size):
            raise ValueError("a chunk whose dimensions differ from its tensor's")
    return size, dtype


class _Window(io.RawIOBase):
    """Bytes ``offset`` to ``offset + length`` of ``handle`` as a seekable file of their own:
    the ``torch.save`` archive DCP wrote for one value, inside a data file."""

    def __init__(self, handle: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self._handle, self._offset, self._length = handle, offset, length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, target: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + target)
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._length - self._position))
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(count)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _storage_entries(metadata: Any, fqns: set[str], path: Path) -> Iterable[tuple[str, Any]]:
    """``(fqn, storage info)`` for every slice DCP would read for ``fqns``, checked for type."""
    for index, info in metadata.storage_data.items():
        fqn = getattr(index, "fqn", None)
        if fqn not in fqns:
            continue
        relative = getattr(info, "relative_path", None)
        offset = getattr(info, "offset", None)
        length = getattr(info, "length", None)
        transforms = getattr(info, "transform_descriptors", None)
        if not (type(relative) is str and relative and Path(relative).name == relative):
            raise fail(path, f".metadata names a data file outside the folder for {fqn}", "corrupt")
        if not (type(offset) is int and type(length) is int and offset >= 0 and length >= 0):
            raise fail(path, f".metadata gives {fqn} no valid offset and length", "corrupt")
        if transforms is not None and (
            not isinstance(transforms, (list, tuple)) or not all(type(t) is str for t in transforms)
        ):
            raise fail(path, f".metadata gives {fqn} invalid transforms", "corrupt")
        yield fqn, info


def check_storage(path: Path, metadata: Any, fqns: set[str], tensor_bytes: int) -> None:
    """Check every slice DCP would read for ``fqns`` before it reads any (see module doc)."""
    by_file: dict[str, list[tuple[str, Any]]] = {}
    for fqn, info in _storage_entries(metadata, fqns, path):
        by_file.setdefault(info.relative_path, []).append((fqn, info))
    held = 0
    compressed = False
    for relative, entries in by_file.items():
        file = path / relative
        try:
            if not file.is_file():
                raise fail(path, f"data file {relative} is missing", "corrupt")
            size = file.stat().st_size
            held += size
            with file.open("rb") as handle:
                for fqn, info in entries:
                    if info.offset + info.length > size:
                        message = f"{relative} ends before {fqn}'s bytes (truncated)"
                        raise fail(path, message, "corrupt")
                    if getattr(info, "transform_descriptors", None):
                        compressed = True  # torch.load sees it only once DCP decodes it
                        continue
                    window = io.BufferedReader(_Window(handle, info.offset, info.length))
                    problem = scan_torch_save(window)
                    if problem is not None:
                        raise fail(path, f"{relative}: {fqn} not loaded: {problem}", "corrupt")
        except OSError as exc:
            raise os_failure(path, exc, f"{relative}: ") from exc
    if not compressed and tensor_bytes > held:
        message = f".metadata claims {tensor_bytes} bytes of tensors; the data files hold less"
        raise fail(path, message, "corrupt")
