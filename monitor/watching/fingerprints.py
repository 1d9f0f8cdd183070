"""Cheap observations of a checkpoint: is it still changing, and which version is it?

``observe`` is a handful of ``stat`` calls: the watcher repeats it every tick while a
checkpoint settles, so it must not read data. ``fingerprint`` runs once per complete
checkpoint and identifies that version of it without reading multi-gigabyte files whole: the
size and modification time, plus the first and last 64 KiB (for a ``torch.save`` zip the
tail is the central directory, which carries a CRC of every tensor record). For a folder it
hashes every file's relative path, size and time, plus the head and tail of the few small
files that describe the whole (``.metadata``, ``*.json``, marker files). The path itself is
left out, so a checkpoint renamed or moved within the run is recognised as already seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from monitor.watching.candidates import matches_any

CHUNK = 64 * 1024
# Small files whose content describes a folder checkpoint; read head and tail, at most a few.
DESCRIPTIVE = (".metadata", "*.json", "*.txt", "*.yaml")
MAX_DESCRIPTIVE = 16


@dataclass(frozen=True)
class Observation:
    """A checkpoint's state right now; ``state`` changes whenever a writer touches it.

    For a folder, ``files`` lists ``(relative path, size, mtime_ns)`` of everything inside it
    and ``folders`` its sub-folders, both as POSIX relative paths.
    """

    size: int
    mtime_ns: int
    state: str
    files: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    folders: tuple[str, ...] = field(default=(), repr=False)

    def names(self) -> set[str]:
        """The base names of everything inside a folder, at any depth."""
        return {Path(rel).name for rel, _, _ in self.files} | {Path(f).name for f in self.folders}

    def top_level(self) -> set[str]:
        """The names directly inside a folder."""
        return {rel for rel, _, _ in self.files if "/" not in rel} | {
            f for f in self.folders if "/" not in f
        }


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()


def _observe_folder(folder: Path) -> Observation:
    files: list[tuple[str, int, int]] = []
    folders: list[str] = []
    empty_since = folder.stat().st_mtime_ns
    stack = [(folder, "")]
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as iterator:
            entries = list(iterator)
        for entry in entries:
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(rel)
                    stack.append((Path(entry.path), rel + "/"))
                    continue
                stat = entry.stat()
            except FileNotFoundError:
                continue  # deleted (or a dangling link) while we looked: the state moves on
            files.append((rel, stat.st_size, stat.st_mtime_ns))
    files.sort()
    folders.sort()
    listing = "\n".join([*(f"{r}\0{s}\0{m}" for r, s, m in files), *folders])
    state = _digest(listing.encode("utf-8", "surrogateescape"))
    size = sum(size for _, size, _ in files)
    newest = max((mtime for _, _, mtime in files), default=empty_since)
    return Observation(size, newest, state, tuple(files), tuple(folders))


def observe(path: Path, is_dir: bool) -> Observation | None:
    """The checkpoint's state, or None when it is gone (or is no longer what it was).

    Other ``OSError``s (``PermissionError`` above all) reach the caller, which reports them.
    """
    try:
        if is_dir:
            if not path.is_dir():
                return None
            return _observe_folder(path)
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not path.is_file():
        return None
    state = f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
    return Observation(stat.st_size, stat.st_mtime_ns, state)


def head_and_tail(path: Path, size: int) -> bytes:
    """The first and last ``CHUNK`` bytes (the whole file when it is small)."""
    with path.open("rb") as handle:
        head = handle.read(CHUNK)
        if size <= CHUNK:
            return head
        handle.seek(max(CHUNK, size - CHUNK))
        return head + handle.read(CHUNK)


def fingerprint(path: Path, is_dir: bool, observation: Observation) -> str:
    """A digest of this version of the checkpoint; raises OSError when it cannot be read."""
    if not is_dir:
        header = f"file\0{observation.size}\0{observation.mtime_ns}\0".encode()
        return _digest(header, head_and_tail(path, observation.size))
    parts = [f"folder\0{observation.state}\0".encode()]
    descriptive = [
        (rel, size)
        for rel, size, _ in observation.files
        if matches_any(Path(rel).name, DESCRIPTIVE)
    ]
    for rel, size in descriptive[:MAX_DESCRIPTIVE]:
        parts.append(rel.encode("utf-8", "surrogateescape") + b"\0")
        parts.append(head_and_tail(path / rel, size))
    return _digest(*parts)
