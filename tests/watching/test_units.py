"""The watcher's rules one at a time, on real files: what counts, what is whole, which version."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from monitor.watching.candidates import Layout, folder_kind
from monitor.watching.fingerprints import CHUNK, fingerprint, observe
from monitor.watching.readiness import Completeness, marker_bases

PATTERNS = ("*.pt", "*.ckpt", "*.safetensors", "checkpoint-*")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def layout(root: Path, patterns: tuple[str, ...] = PATTERNS) -> Layout:
    return Layout(root, patterns, ("*-unfinished", "commit_success.txt"), r"step[_=-]?(\d+)")


def no_errors(path: Path, error: OSError) -> None:
    raise AssertionError(f"{path}: {error}")


@pytest.mark.parametrize(
    ("name", "entries", "kind"),
    [
        ("step_5", [".metadata", "__0_0.distcp"], "dcp"),
        ("step_5", ["__0_0.distcp"], "dcp"),  # still being written, but a DCP folder already
        ("x", ["config.json", "model.safetensors"], "hf"),
        ("x", ["model-00001-of-00003.safetensors"], "hf"),  # a shard before its index
        ("x", ["pytorch_model.bin.index.json"], "hf"),
        ("checkpoint-500", ["optimizer.pt"], "named"),
        ("tmp-checkpoint-500", ["model.safetensors"], None),  # staged, renamed when done
        (".trash", [".metadata"], None),
        ("logs", ["events.out", "model.pt"], None),
    ],
)
def test_folder_checkpoints(name: str, entries: list[str], kind: str | None) -> None:
    assert folder_kind(name, entries, PATTERNS) == kind


def test_the_walk_finds_files_and_whole_folders_only(tmp_path: Path) -> None:
    for name in [
        "step_1.pt", "sub/deeper/step_2.ckpt", "notes.txt", "step_3.pt.tmp", ".hidden/step_4.pt",
        "dcp/step_5/__0_0.distcp", "dcp/step_5/.metadata", "dcp/step_5/extra/model.pt",
        "checkpoint-6/model.safetensors", "checkpoint-6/optimizer.pt", "step_7-unfinished",
    ]:  # fmt: skip
        touch(tmp_path / name)
    found = sorted(
        (str(p.relative_to(tmp_path)), d) for p, d in layout(tmp_path).walk(tmp_path, no_errors)
    )
    assert found == [
        ("checkpoint-6", True), ("dcp/step_5", True), ("step_1.pt", False),
        ("sub/deeper/step_2.ckpt", False),
    ]  # fmt: skip


def test_a_change_inside_a_folder_checkpoint_concerns_the_folder(tmp_path: Path) -> None:
    rules = layout(tmp_path)
    folder = tmp_path / "run" / "step_5"
    touch(folder / "__0_0.distcp")
    inner = touch(folder / "nested" / "model.pt")
    assert rules.candidates_at(inner, no_errors) == [(folder, True)]
    assert rules.candidates_at(touch(folder / ".metadata"), no_errors) == [(folder, True)]
    assert rules.candidates_at(tmp_path / "run", no_errors) == [(folder, True)]
    assert rules.candidates_at(tmp_path / "gone.pt", no_errors) == []
    assert rules.candidates_at(touch(tmp_path / "a.pt.partial"), no_errors) == []
    assert rules.candidates_at(Path("/elsewhere/a.pt"), no_errors) == []
    assert rules.candidates_at(touch(tmp_path / "a.pt"), no_errors) == [(tmp_path / "a.pt", False)]


def test_the_step_comes_from_the_name_or_the_nearest_folder(tmp_path: Path) -> None:
    rules = layout(tmp_path / "step_9")  # the run directory's own name does not count
    root = rules.root
    assert rules.step_of(root / "epoch=1-step=500.ckpt") == 500
    assert rules.step_of(root / "step_3" / "weights" / "model.pt") == 3
    assert rules.step_of(root / "model.pt") is None


def test_markers_beside_a_checkpoint(tmp_path: Path) -> None:
    rules = Completeness(("*-unfinished",))
    ckpt = touch(tmp_path / "megatron--step=10-EMA.ckpt")
    seen = observe(ckpt, False)
    assert seen is not None and rules.missing(ckpt, False, seen) is None
    touch(tmp_path / "megatron--step=10-unfinished")  # NeMo strips .ckpt and -EMA
    assert "megatron--step=10-unfinished" in str(rules.missing(ckpt, False, seen))
    other = touch(tmp_path / "step=1.ckpt")  # step=10's marker is not step=1's
    touch(tmp_path / "step=10-unfinished")
    seen_other = observe(other, False)
    assert seen_other is not None and rules.missing(other, False, seen_other) is None
    assert marker_bases("a-EMA.ckpt") == {"a-EMA.ckpt", "a-EMA", "a"}


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        (["__0_0.distcp"], ".metadata"),
        (["__0_0.distcp", ".metadata"], None),
        (["__0_0.distcp", ".metadata", ".metadata.tmp"], "still being written"),
        (["model.pt", "sub/x-unfinished"], "unfinished marker x-unfinished"),
        (["model.pt"], None),
    ],
)
def test_markers_inside_a_folder(tmp_path: Path, files: list[str], missing: str | None) -> None:
    folder = tmp_path / "step_5"
    for name in files:
        touch(folder / name)
    seen = observe(folder, True)
    assert seen is not None
    reason = Completeness().missing(folder, True, seen)
    assert (reason is None) if missing is None else (missing in str(reason))


def test_ready_markers_apply_to_folders_only(tmp_path: Path) -> None:
    rules = Completeness(ready=("commit_success.txt", "*.done"))
    folder = tmp_path / "step_5"
    touch(folder / "model.pt")
    seen = observe(folder, True)
    assert seen is not None and "ready markers" in str(rules.missing(folder, True, seen))
    touch(folder / "save.done")
    seen = observe(folder, True)
    assert seen is not None and rules.missing(folder, True, seen) is None
    single = touch(tmp_path / "step_6.pt")
    seen = observe(single, False)
    assert seen is not None and rules.missing(single, False, seen) is None


def test_observations_follow_every_change(tmp_path: Path) -> None:
    folder = tmp_path / "step_5"
    touch(folder / "a.distcp", b"1234")
    first = observe(folder, True)
    touch(folder / "b" / "c.distcp", b"56")
    second = observe(folder, True)
    assert first is not None and second is not None
    assert (second.size, second.state != first.state) == (6, True)
    assert second.mtime_ns == max(p.stat().st_mtime_ns for p in folder.rglob("*.distcp"))
    assert observe(tmp_path / "nothing", True) is None
    assert observe(folder, False) is None  # a folder where a file was: not the same checkpoint


def test_fingerprints_name_the_version_not_the_path(tmp_path: Path) -> None:
    path = touch(tmp_path / "step_1.pt", os.urandom(3 * CHUNK))
    seen = observe(path, False)
    assert seen is not None
    digest = fingerprint(path, False, seen)
    copy = tmp_path / "last.pt"
    shutil.copy2(path, copy)
    copied = observe(copy, False)
    assert copied is not None and fingerprint(copy, False, copied) == digest
    time.sleep(0.01)
    touch(path, os.urandom(3 * CHUNK))  # rewritten: same size, new bytes and time
    again = observe(path, False)
    assert again is not None and fingerprint(path, False, again) != digest

    folder = touch(tmp_path / "a" / "step_2" / ".metadata", b"meta").parent
    moved = tmp_path / "b" / "step_2"
    first = observe(folder, True)
    assert first is not None
    folder_digest = fingerprint(folder, True, first)
    moved.parent.mkdir()
    folder.rename(moved)
    second = observe(moved, True)
    assert second is not None and fingerprint(moved, True, second) == folder_digest


def test_a_huge_file_is_fingerprinted_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    with path.open("wb") as handle:
        handle.truncate(64 * 2**30)  # 64 GiB, sparse: reading it whole would take minutes
    seen = observe(path, False)
    assert seen is not None and seen.size == 64 * 2**30
    # Bytes read, not seconds: a clock bound flakes on a loaded machine, a byte count does not.
    before = bytes_read()
    fingerprint(path, False, seen)
    assert bytes_read() - before < 2**20


def bytes_read() -> int:
    """Bytes this process has read through read(2) and friends (Linux's /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")
