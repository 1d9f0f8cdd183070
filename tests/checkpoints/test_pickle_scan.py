"""The cost model of pickles (``pickle_scan``) against real files and crafted bombs.

Real ``torch.save`` files of every shape the loader reads pass; the two shapes that crash or
stall torch's weights-only unpickler are caught, in both the zip and the legacy format, and
wherever unpickling hashes (dict keys, ``set(list)`` and ``Counter(list)``, a list grown
after it was wrapped). The end-to-end effect (the daemon's process survives) is in
``tests/faults/test_checkpoint_faults.py``, where an unguarded run may crash.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from monitor.checkpoints.pickle_scan import DEPTH_LIMIT, HASH_LIMIT, scan_torch_save
from tests import checkpoint_writers as writers
from tests.checkpoints import crafted as c

WRITERS: dict[str, Callable[[Path, writers.Net], Path]] = {
    "raw": writers.write_raw,
    "legacy": writers.write_legacy,
    "model_state_dict+optimizer": writers.write_model_state_dict,
    "nested": writers.write_nested,
    "lightning": writers.write_lightning,
    "hf-bin": lambda folder, net: writers.write_hf_bin(folder, net) / "pytorch_model.bin",
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_real_checkpoints_pass(writer: Callable[[Path, writers.Net], Path], tmp_path: Path) -> None:
    path = writer(tmp_path, writers.trained_net())
    with path.open("rb") as handle:
        handle.seek(0)
        assert scan_torch_save(handle) is None
        assert handle.tell() == 0


def test_many_tensors_and_shared_values_pass() -> None:
    """Sharing is normal (Lightning saves one dict under three loops): only its cost counts."""
    shared = {"batch_progress": {"total": 5}}
    state = {f"layer{i}.weight": torch.zeros(2) for i in range(2000)}
    state.update(loops={"validate": shared, "test": shared, "predict": shared}, step=(1, (2, 3)))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert scan_torch_save(buffer) is None


def _bomb_in_a_set(grow_after_wrapping: bool) -> bytes:
    """``Counter(list)`` whose list holds a 2**30-item tuple: added before or after the
    list was put in the argument tuple (a model that sizes values once would miss this)."""
    levels = b"".join(c.put(i) + c.get(i) + pickle.TUPLE2 for i in range(30))
    tuple_ = c.NONE + levels + c.put(200)
    counter = c.global_("collections", "Counter")
    if grow_after_wrapping:
        body = counter + pickle.EMPTY_LIST + c.put(201) + pickle.TUPLE1 + c.get(201)
        body += tuple_ + pickle.APPEND + pickle.POP + pickle.REDUCE
    else:
        body = counter + pickle.EMPTY_LIST + tuple_ + pickle.APPEND + pickle.TUPLE1 + pickle.REDUCE
    return pickle.PROTO + b"\x02" + body + pickle.STOP


@pytest.mark.parametrize(
    "data_pkl",
    [
        c.deep_tuple_key(DEPTH_LIMIT + 1),
        c.shared_tuple_key(40),
        _bomb_in_a_set(False),
        _bomb_in_a_set(True),
    ],
    ids=["deep-tuple-key", "shared-tuple-key", "counter-of-a-list", "list-grown-after-wrapping"],
)
def test_bombs_in_a_zip_archive_are_caught(data_pkl: bytes) -> None:
    problem = scan_torch_save(io.BytesIO(c.torch_save_with(data_pkl)))
    assert problem is not None
    assert str(DEPTH_LIMIT) in problem or str(HASH_LIMIT) in problem


def test_bombs_in_the_legacy_format_are_caught() -> None:
    """The legacy loader unpickles its first pickle (the magic number) before any check."""
    for data in (c.deep_tuple_key(DEPTH_LIMIT + 1), pickle.dumps(1) + c.shared_tuple_key(40)):
        assert scan_torch_save(io.BytesIO(data)) is not None


def test_bounds_hold_just_inside() -> None:
    """A tuple as deep as the limit, hashing near its budget: loaded, not refused."""
    assert scan_torch_save(io.BytesIO(c.torch_save_with(c.deep_tuple_key(DEPTH_LIMIT - 1)))) is None
    assert scan_torch_save(io.BytesIO(c.torch_save_with(c.shared_tuple_key(20)))) is None


def test_a_length_field_cannot_make_the_scan_read_gigabytes() -> None:
    data = pickle.PROTO + b"\x02" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + b"x" * 32
    problem = scan_torch_save(io.BytesIO(data))
    assert problem is not None and str(1 << 40) in problem


def test_an_archive_python_cannot_read_is_refused() -> None:
    data = c.torch_save_with(pickle.dumps({"a": 1}, protocol=2))
    assert scan_torch_save(io.BytesIO(data[: len(data) - 30])) is not None


def test_garbage_is_left_to_torch() -> None:
    """Bytes that are no pickle: nothing to model, and torch's own error says why."""
    for data in (b"", b"\x00" * 64, bytes(range(256))):
        assert scan_torch_save(io.BytesIO(data)) is None


def test_counter_of_plain_items_passes() -> None:
    data = pickle.dumps(collections.Counter(["a", "b", "a"]), protocol=2)
    assert scan_torch_save(io.BytesIO(c.torch_save_with(data))) is None
