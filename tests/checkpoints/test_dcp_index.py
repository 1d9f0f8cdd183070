"""A DCP index that DCP itself would accept, pointing where it should not (``dcp_index``).

Each test edits the real ``Metadata`` of a real ``dcp.save`` and writes it back with
``pickle``, as a writer with access to the folder could: the values are of the types DCP
writes, so only the checks on what they say stand between them and DCP's reader. (A FIFO
named as a data file is in ``tests/faults/test_checkpoint_faults.py``, in a subprocess,
since a regression there would block forever.)
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo

from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError
from tests import checkpoint_writers as writers

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return writers.write_dcp_flat(tmp_path_factory.mktemp("dcp"), writers.trained_net())


def edited(saved: Path, folder: Path, edit: Callable[[Any, Path], None]) -> Path:
    """A copy of the checkpoint whose index ``edit(metadata, copy)`` changed."""
    copy = Path(shutil.copytree(saved, folder / saved.name))
    metadata = pickle.loads((copy / ".metadata").read_bytes())
    edit(metadata, copy)
    (copy / ".metadata").write_bytes(pickle.dumps(metadata))
    return copy


def _point_at(relative: str, offset: int = 0, length: int = 64) -> Callable[[Any, Path], None]:
    def edit(metadata: Any, copy: Path) -> None:
        index = next(key for key in metadata.storage_data if key.fqn == "head.bias")
        metadata.storage_data[index] = _StorageInfo(relative, offset, length)

    return edit


def _claim(elements: int) -> Callable[[Any, Path], None]:
    def edit(metadata: Any, copy: Path) -> None:
        entry = metadata.state_dict_metadata["head.bias"]
        entry.size = torch.Size([elements])
        entry.chunks[0].sizes = torch.Size([elements])

    return edit


def _share_chunks(metadata: Any, copy: Path) -> None:
    """Every tensor's chunk list is one list of 100 000 chunks: a few kB in the file, and
    DCP's planner would make a read for each chunk of each tensor."""
    chunks = metadata.state_dict_metadata["head.bias"].chunks * 100_000
    for entry in metadata.state_dict_metadata.values():
        entry.chunks = chunks


def _replace(field: str, value: object) -> Callable[[Any, Path], None]:
    return lambda metadata, copy: setattr(metadata, field, value)


def _outside(metadata: Any, copy: Path) -> None:
    (copy.parent / "elsewhere.distcp").write_bytes((copy / "__0_0.distcp").read_bytes())
    _point_at("../elsewhere.distcp")(metadata, copy)


CASES: dict[str, tuple[Callable[[Any, Path], None], str]] = {
    "data-file-outside-the-folder": (_outside, "outside the folder"),
    "absolute-data-file": (_point_at("/etc/hostname"), "outside the folder"),
    "missing-data-file": (_point_at("gone.distcp"), "gone.distcp is missing"),
    "slice-past-the-end": (_point_at("__0_0.distcp", 1 << 30), "ends before head.bias"),
    "negative-offset": (_point_at("__0_0.distcp", -1), "no valid offset"),
    "terabyte-tensor": (_claim(1 << 40), "claims"),
    "shared-chunk-lists": (_share_chunks, "more tensor chunks than it has bytes"),
    "not-metadata": (lambda metadata, copy: None, ""),
    "state-not-a-dict": (_replace("state_dict_metadata", [1, 2]), "no state_dict_metadata"),
    "storage-meta-not-storage-meta": (_replace("storage_meta", Path("x")), "storage_meta"),
    "storage-data-missing": (_replace("storage_data", None), "no storage_data"),
}


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_an_index_pointing_astray_is_corrupt(case: str, saved: Path, tmp_path: Path) -> None:
    edit, message = CASES[case]
    path = edited(saved, tmp_path, edit)
    if case == "not-metadata":
        (path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
        message = "is not DCP metadata"
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, CheckpointConfig())
    assert info.value.reason == "corrupt" and message in str(info.value), info.value
    assert str(path) in str(info.value)


def test_planner_key_paths_are_used_only_when_plain(saved: Path, tmp_path: Path) -> None:
    """A key path that is not a short tuple of names falls back to the flattened name."""

    def edit(metadata: Any, copy: Path) -> None:
        metadata.planner_data = {"head.bias": ("x",) * 1000, "head.weight": (("deep",),)}

    loaded = read_checkpoint(edited(saved, tmp_path, edit), CheckpointConfig())
    assert loaded.state_dict is not None
    assert {"head.bias", "head.weight"} <= set(loaded.state_dict)
