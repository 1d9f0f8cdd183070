"""TensorBoard events written by ``BoardWriter`` and read back with TensorBoard's own reader.

The results are the engine's own types (``StiffnessResult.to_dict``, the JSON the store
keeps); every tag, step and value is read back through ``EventAccumulator``, as TensorBoard
reads it, never by parsing the files ourselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monitor.exporter.heatmap import TARGET
from monitor.exporter.tensorboard import (
    STOP_TAG,
    SUFFIX,
    BoardEntry,
    BoardWriter,
    TensorBoardError,
    written_steps,
)
from monitor.stiffness.result import (
    ClassStiffness,
    Counts,
    DistanceProfile,
    PairSetStiffness,
    StiffnessResult,
)


def stiffness(shift: float) -> ClassStiffness:
    sums = [[4.0 + shift, -1.0, 0.5], [0.25, 3.0, -0.5], [1.0, 0.0, 2.0 - shift]]
    counts = [[5, 5, 5], [5, 5, 5], [5, 5, 0]]  # the last diagonal cell is undefined
    return ClassStiffness.from_sums(sums, counts)


def result(shift: float, *, accuracy: float | None = 0.75) -> dict[str, Any]:
    value = StiffnessResult(
        mode="pair",
        classes=(0, 1, 2),
        probe_loss=1.25 + shift,
        probe_accuracy=accuracy,
        cosine=stiffness(shift),
        sign=stiffness(-shift),
        counts=Counts(
            examples=6, per_class=(2, 2, 2), zero_gradient=0, train_examples=6, parameters=10
        ),
        gradient_norms=(1.0,) * 6,
        pair_sets={"train-val": PairSetStiffness(stiffness(2 * shift), stiffness(shift))},
        distance=DistanceProfile((0.0, 1.0), (0.5,), (0.1,), (3,), (4,), 0.375),
        train_probe_loss=0.5,
        train_probe_accuracy=1.0,
    )
    return {"run": "a", "step": None, "checkpoint": "x.pt", **value.to_dict()}


def read(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def scalar_series(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def f32(value: float) -> float:
    return float(np.float32(value))


def expected_scalars(data: Mapping[str, Any]) -> dict[str, float]:
    """What the store's JSON says each tag must hold (defined values only)."""
    names = {
        "within": "within_class",
        "between": "between_class",
        "within_pooled": "within_class_pooled",
        "between_pooled": "between_class_pooled",
    }
    sets = {"val-val": data, **data["pair_sets"]}
    found: dict[str, float | None] = {}
    for pair_set, node in sets.items():
        for kind, prefix in (("cosine", ""), ("sign", "sign_")):
            for key, name in names.items():
                found[f"stiffness/{pair_set}/{prefix}{name}"] = node[kind][key]
    found["stiffness/val-val/critical_length"] = data["distance"]["critical_length"]
    probe = {
        "probe_loss": "loss",
        "probe_accuracy": "accuracy",
        "train_probe_loss": "train_loss",
        "train_probe_accuracy": "train_accuracy",
    }
    for key, tag in probe.items():
        found[f"probe/{tag}"] = data[key]
    return {tag: value for tag, value in found.items() if value is not None}


def test_every_scalar_image_and_the_stop_read_back_at_its_step(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "stiffness-monitor"
    writer = BoardWriter(folder)
    first, second = result(0.0), result(0.5, accuracy=None)
    writer.write(BoardEntry(10, first, {"drop": False, "plateau": False}))
    writer.write(BoardEntry(20, second, {"drop": True, "plateau": False}, True, "rule drop: fell"))
    writer.close()
    [name] = os.listdir(folder)
    assert name.startswith("events.out.tfevents.") and name.endswith(SUFFIX)
    events = read(folder)
    tags = events.Tags()
    wanted = set(expected_scalars(first)) | {"rules/drop", "rules/plateau", STOP_TAG}
    assert set(tags["scalars"]) == wanted
    for tag, value in expected_scalars(first).items():
        assert scalar_series(events, tag)[0] == (10, f32(value)), tag
    for tag, value in expected_scalars(second).items():
        assert scalar_series(events, tag)[-1] == (20, f32(value)), tag
    assert [step for step, _ in scalar_series(events, "probe/accuracy")] == [10]  # null: left out
    assert scalar_series(events, "rules/drop") == [(10, 0.0), (20, 1.0)]
    assert scalar_series(events, "rules/plateau") == [(10, 0.0), (20, 0.0)]
    assert scalar_series(events, STOP_TAG) == [(10, 0.0), (20, 1.0)]
    [reason] = events.Tensors("stop/reason/text_summary")
    assert reason.step == 20 and reason.tensor_proto.string_val == [b"rule drop: fell"]
    assert set(tags["images"]) == {"class_matrix/val-val", "class_matrix/train-val"}
    for image in events.Images("class_matrix/val-val"):
        cell = TARGET // 3
        assert (image.width, image.height) == (3 * cell, 3 * cell)
    assert [image.step for image in events.Images("class_matrix/val-val")] == [10, 20]
    assert written_steps(folder) == {10, 20}


def test_written_steps_count_only_whole_entries_of_our_own_files(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "board"
    assert written_steps(folder) == set()  # no folder yet
    theirs = SummaryWriter(str(folder))  # the trainer's own events, in the same folder
    theirs.add_scalar(STOP_TAG, 1.0, 99)
    theirs.close()
    writer = BoardWriter(folder)
    writer.write(BoardEntry(5, result(0.0)))
    writer.close()
    assert written_steps(folder) == {5}
    writer.write(BoardEntry(6, result(0.1)))  # reopened after close: a second file
    writer.close()
    assert len(list(folder.glob(f"*{SUFFIX}"))) == 2
    assert written_steps(folder) == {5, 6}
    (folder / f"events.out.tfevents.1.host.1.0{SUFFIX}").write_bytes(b"\x00" * 5)  # truncated
    assert written_steps(folder) == {5, 6}  # TensorBoard's reader stops at a truncated record


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_planted_path_is_refused_and_writing_heals_once_it_is_gone(
    tmp_path: Path, planted: str
) -> None:
    folder = tmp_path / "run" / "stiffness-monitor"
    folder.parent.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "symlink":
        folder.symlink_to(elsewhere, target_is_directory=True)
    else:
        folder.write_text("not a folder")
    writer = BoardWriter(folder)
    with pytest.raises(TensorBoardError, match=f"{folder}: expected a folder, got"):
        writer.write(BoardEntry(1, result(0.0)))
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    folder.unlink()
    writer.write(BoardEntry(2, result(0.0)))
    writer.close()
    assert written_steps(folder) == {2}


def test_an_unwritable_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "run").write_text("a file where a folder must be created")
    writer = BoardWriter(parent / "run" / "stiffness-monitor")
    with pytest.raises(TensorBoardError, match="stiffness-monitor"):
        writer.write(BoardEntry(1, result(0.0)))
    writer.close()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs filled to the last byte by ``filler`` (needs root; else skipped)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    tool = shutil.which("mount")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("mounting a tiny tmpfs needs root and mount(8)")
    done = subprocess.run([tool, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (mount / "run").mkdir()
        with open(mount / "filler", "wb") as handle, contextlib.suppress(OSError):
            handle.write(b"\0" * (1 << 20))
            handle.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_an_error_and_leaves_only_whole_entries(full_disk: Path) -> None:
    folder = full_disk / "run" / "stiffness-monitor"
    writer = BoardWriter(folder)
    with pytest.raises(TensorBoardError, match="No space left"):
        writer.write(BoardEntry(1, result(0.0)))
    assert list(folder.iterdir()) == []  # not even the header: the new file is removed again
    filler = full_disk / "filler"
    os.truncate(filler, filler.stat().st_size - 4096)  # a page: the header fits, the entry not
    long_reason = "rule drop: " + "x" * 20_000
    with pytest.raises(TensorBoardError, match="No space left"):
        writer.write(BoardEntry(2, result(0.0), {"drop": True}, True, long_reason))
    [partial] = folder.iterdir()
    assert partial.stat().st_size == 40  # cut back to the file's header: no half entry
    assert written_steps(folder) == set()
    filler.unlink()  # space again: the next write works, on a new file
    writer.write(BoardEntry(2, result(0.0), {"drop": True}, True, long_reason))
    writer.close()
    events = read(folder)
    assert scalar_series(events, "rules/drop") == [(2, 1.0)]
    assert len(events.Tensors("stop/reason/text_summary")) == 1
    assert written_steps(folder) == {2}
