"""What counts as a checkpoint in a run directory, and the value handed to the daemon.

A checkpoint is either a FILE whose name matches one of the run's patterns, or a FOLDER that
is a checkpoint as a whole: a ``torch.distributed.checkpoint`` folder (``.metadata`` or
``*.distcp`` shards), a Hugging Face folder (its weight files or their shards), or a folder
whose own name matches a pattern (``checkpoint-*``, ``step_*``). Files inside a folder
checkpoint never count on their own. Hidden and temporary names (``.*``, ``*.tmp``, ``*~``,
``*.partial``, ``tmp-*``, ...) are never checkpoints and their folders are not searched:
writers use them for what is not finished yet. The run directory itself is never a folder
checkpoint, so a Hugging Face Trainer ``output_dir`` that holds both ``checkpoint-*``
folders and a final ``model.safetensors`` yields each of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from monitor.checkpoints.huggingface import HF_FILES
from monitor.checkpoints.reader import step_from_name

# Names that writers use for work in progress: never candidates, never searched.
IGNORED_NAMES = (
    ".*", "*~", "*.tmp", "*.temp", "*.part", "*.partial", "*.incomplete", "*.swp", "tmp-*",
)  # fmt: skip
# Shards a Hugging Face folder may hold before its index file is written.
HF_SHARDS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")

OnError = Callable[[Path, OSError], None]


@dataclass(frozen=True)
class Candidate:
    """A complete checkpoint, ready to evaluate.

    ``step`` comes from the name (the file or folder, else the nearest parent folder that has
    one); the loader may still find the step inside the payload. ``size`` and ``mtime_ns``
    are summed and maximised over the files of a folder. ``fingerprint`` changes whenever the
    checkpoint is rewritten, and does not depend on its path: a renamed copy is the same
    checkpoint.
    """

    run: str
    path: Path
    is_dir: bool
    step: int | None
    size: int
    mtime_ns: int
    fingerprint: str


def emission_order(candidate: Candidate) -> tuple[bool, int, int, str]:
    """Training order: named steps first, by step, then by modification time."""
    step = -1 if candidate.step is None else candidate.step
    return (candidate.step is None, step, candidate.mtime_ns, str(candidate.path))


def matches_any(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatchcase(name, glob) for glob in globs)


def folder_kind(name: str, entries: Iterable[str], patterns: Iterable[str]) -> str | None:
    """``dcp``, ``hf`` or ``named`` when a folder with these entries is a checkpoint."""
    if matches_any(name, IGNORED_NAMES):
        return None
    entries = set(entries)
    if ".metadata" in entries or any(entry.endswith(".distcp") for entry in entries):
        return "dcp"
    if entries.intersection(HF_FILES) or any(matches_any(e, HF_SHARDS) for e in entries):
        return "hf"
    if matches_any(name, patterns):
        return "named"
    return None


@dataclass(frozen=True)
class Layout:
    """The checkpoints of one run directory: which paths count, and where to find them.

    ``markers`` are the unfinished and ready marker globs: a marker is never a checkpoint,
    even where its name matches a pattern (``step_*`` matches ``step_5-unfinished``).
    """

    root: Path
    patterns: tuple[str, ...]
    markers: tuple[str, ...] = ()
    step_regex: str = r"step[_=-]?(\d+)"

    def is_checkpoint_file(self, name: str) -> bool:
        return (
            matches_any(name, self.patterns)
            and not matches_any(name, IGNORED_NAMES)
            and not matches_any(name, self.markers)
        )

    def step_of(self, path: Path) -> int | None:
        """The step in the name, else in the nearest parent below the root that has one."""
        for part in (path, *path.parents):
            if part == self.root or self.root not in part.parents:
                break
            step = step_from_name(part, self.step_regex)
            if step is not None:
                return step
        return None

    def _kind_of(self, folder: Path, kinds: dict[Path, str | None]) -> str | None:
        if folder not in kinds:
            with os.scandir(folder) as entries:
                names = (entry.name for entry in entries)
                kinds[folder] = folder_kind(folder.name, names, self.patterns)
        return kinds[folder]

    def candidates_at(
        self, path: Path, on_error: OnError, kinds: dict[Path, str | None] | None = None
    ) -> list[tuple[Path, bool]]:
        """The checkpoints a change at ``path`` may concern, as ``(path, is_dir)``.

        The folder checkpoint that contains ``path``, or ``path`` itself when it is a
        checkpoint, or everything below it when it is an ordinary folder (one that was moved
        in whole arrives as a single event). A path that no longer exists concerns nothing:
        a checkpoint already waiting is re-examined by the watcher anyway. ``kinds`` caches
        what each parent folder is, for a batch of changes in one large folder.
        """
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return []
        if not relative.parts:
            return list(self.walk(self.root, on_error))
        kinds = {} if kinds is None else kinds
        folder = self.root
        try:
            for part in relative.parts[:-1]:
                if matches_any(part, IGNORED_NAMES):
                    return []  # inside a hidden or temporary folder
                folder = folder / part
                if self._kind_of(folder, kinds) is not None:
                    return [(folder, True)]
            if matches_any(path.name, IGNORED_NAMES):
                return []
            if path.is_dir():
                return list(self.walk(path, on_error))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as error:
            on_error(folder, error)
            return []
        if self.is_checkpoint_file(path.name) and path.is_file():
            return [(path, False)]
        return []

    def walk(self, top: Path, on_error: OnError) -> Iterator[tuple[Path, bool]]:
        """Every checkpoint at or below ``top`` (which must not be inside a folder checkpoint).

        Symlinked files count (``last.ckpt`` pointing at the newest one); symlinked folders
        are not followed, so a link cycle cannot trap the walk.
        """
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as iterator:
                    entries = list(iterator)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as error:
                on_error(folder, error)
                continue
            names = [entry.name for entry in entries]
            if folder != self.root and folder_kind(folder.name, names, self.patterns):
                yield folder, True
                continue
            for entry in entries:
                if matches_any(entry.name, IGNORED_NAMES):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif self.is_checkpoint_file(entry.name) and entry.is_file():
                        yield Path(entry.path), False
                except OSError:
                    continue
