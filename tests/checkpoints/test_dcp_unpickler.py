"""DCP's ``.metadata`` against crafted pickles: nothing in a file changes the process.

Each attack is written opcode by opcode (``tests.checkpoints.crafted``) and put in front of
the real ``.metadata`` of a real ``dcp.save``, so an unpickler that lets it through goes on
to load the checkpoint as if nothing happened. Every test checks the reader's answer and
that no class, function or module-level object the unpickler can reach was changed (the
``untouched`` fixture restores them if one was, so one failure cannot spread).
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint.filesystem as dcp_filesystem
import torch.distributed.checkpoint.metadata as dcp_metadata

from monitor.checkpoints.dcp_unpickler import MetadataUnpickler
from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import CheckpointConfig
from monitor.errors import CheckpointError
from tests import checkpoint_writers as writers
from tests.checkpoints import crafted as c

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

REACHABLE: list[Any] = [  # what the unpickler can name, and so could try to change
    pathlib.PurePath,
    pathlib.PurePosixPath,
    pathlib.Path,
    pathlib.PosixPath,
    torch.Size,
    collections.OrderedDict,
    torch.serialization._get_layout,
    *(
        value
        for value in vars(dcp_metadata).values()
        if isinstance(value, type) and value.__module__ == dcp_metadata.__name__
    ),
    dcp_filesystem._StorageInfo,
]


def _snapshot() -> list[dict[str, Any]]:
    return [dict(vars(thing)) for thing in REACHABLE]


@pytest.fixture
def untouched() -> Iterator[None]:
    """Fail if the test changed anything reachable, and put it back so others still run."""
    torch.serialization._get_layout("torch.strided")  # type: ignore[no-untyped-call]
    before = _snapshot()  # (after the call above, which fills the layout cache)
    layout_cache = dict(torch.serialization._get_layout.cache)  # type: ignore[attr-defined]
    yield
    changed = []
    for thing, was in zip(REACHABLE, before, strict=True):
        now = dict(vars(thing))
        for name in set(was) | set(now):
            if was.get(name, KeyError) is not now.get(name, KeyError):
                changed.append(f"{getattr(thing, '__qualname__', thing)}.{name}")
                if name in was:
                    setattr(thing, name, was[name])
                else:
                    delattr(thing, name)
    cache = torch.serialization._get_layout.cache  # type: ignore[attr-defined]
    if cache != layout_cache:
        changed.append("torch.serialization._get_layout.cache")
        cache.clear()
        cache.update(layout_cache)
    assert not changed, f"the file changed {changed}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return writers.write_dcp(tmp_path_factory.mktemp("dcp"), writers.trained_net())


@pytest.fixture
def real_metadata(saved: Path) -> bytes:
    return (saved / ".metadata").read_bytes()


@pytest.fixture
def checkpoint(saved: Path, tmp_path: Path) -> Path:
    """A fresh copy of a real ``dcp.save`` folder, whose ``.metadata`` a test replaces."""
    return Path(shutil.copytree(saved, tmp_path / saved.name))


def read_with(folder: Path, metadata: bytes) -> CheckpointError:
    (folder / ".metadata").write_bytes(metadata)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(folder, CheckpointConfig())
    return info.value


LAYOUT_POISON = c.dict_((c.text("torch.strided"), c.text("not a layout")))
RECORD = c.global_(c.DCP, "TensorStorageMetadata")
INSTANCE = RECORD + pickle.EMPTY_TUPLE + pickle.NEWOBJ
MEM_FORMAT = c.global_(c.DCP, "_MEM_FORMAT_ENCODING")

BUILDS = {  # BUILD on anything that is not a fresh DCP record
    "path-class-setattr": c.BREAK_PATH_JOINS,
    "path-class-dict": c.build(c.PATH_CLASS, c.dict_((c.text("__truediv__"), c.NONE))),
    "get_layout-cache": c.build(c.GET_LAYOUT, c.dict_((c.text("cache"), LAYOUT_POISON))),
    "get_layout-defaults": c.build(c.GET_LAYOUT, c.slots(__defaults__=c.tuple_(c.text("x")))),
    "dcp-record-class": c.build(c.global_(c.DCP, "Metadata"), c.slots(planner_data=c.NONE)),
    "dcp-enum-class": c.build(MEM_FORMAT, c.slots(TORCH_CONTIGUOUS_FORMAT=c.NONE)),
    "size-class": c.build(c.global_("torch", "Size"), c.slots(__len__=c.NONE)),
    "dtype": c.build(c.global_("torch", "float32"), c.slots(is_floating_point=c.NONE)),
    "path-instance": c.build(c.reduce(c.PATH_CLASS, c.text("x")), c.slots(_str=c.text("y"))),
    "record-class-attribute": c.build(INSTANCE, c.dict_((c.text("__class__"), c.NONE))),
    "record-twice": c.build(c.build(INSTANCE, c.dict_()), c.dict_()),
    "nested-in-containers": c.list_(c.dict_((c.text("k"), c.tuple_(c.BREAK_PATH_JOINS)))),
}
REDUCES = {  # each allowed callable, called in a way dcp.save never does
    "size-65-dims": c.reduce(c.global_("torch", "Size"), c.tuple_(*[c.integer(1)] * 65)),
    "size-two-args": c.reduce(c.global_("torch", "Size"), c.tuple_(), c.tuple_()),
    "get_layout-not-a-name": c.reduce(c.GET_LAYOUT, c.integer(3)),
    "ordered-dict-with-items": c.reduce(
        c.global_("collections", "OrderedDict"), c.list_(c.tuple_(c.text("k"), c.NONE))
    ),
    "set-two-args": c.reduce(c.global_("builtins", "set"), c.list_(), c.list_()),
    "set-of-nested-tuples": c.reduce(
        c.global_("builtins", "frozenset"), c.list_(c.tuple_(c.tuple_(c.tuple_())))
    ),
    "reconstructor-of-a-path": c.reduce(
        c.global_("copyreg", "_reconstructor"),
        c.PATH_CLASS,
        c.global_("builtins", "object"),
        c.NONE,
    ),
    "object": c.reduce(c.global_("builtins", "object")),
    "path-of-an-int": c.reduce(c.PATH_CLASS, c.integer(1)),
    "enum-functional-api": c.reduce(MEM_FORMAT, c.text("Evil"), c.text("A B")),
    "dcp-record-called": c.reduce(RECORD, c.NONE, c.NONE, c.NONE),
    "args-used-twice": c.reduce(c.global_("torch", "Size"), c.tuple_(c.integer(2)) + c.put(0))
    + c.POP
    + c.global_("torch", "Size")
    + c.get(0)
    + pickle.REDUCE,
}
OTHERS = {  # opcodes that call code, and containers used as something else
    "newobj-of-a-path": c.PATH_CLASS + pickle.EMPTY_TUPLE + pickle.NEWOBJ,
    "newobj-with-args": RECORD + c.tuple_(c.integer(1)) + pickle.NEWOBJ,
    "inst": pickle.MARK + pickle.INST + b"pathlib\nPosixPath\n",
    "obj": pickle.MARK + c.PATH_CLASS + pickle.OBJ,
    "ext1": pickle.EXT1 + b"\x01",
    "persistent-id": pickle.BINPERSID,
    "setitem-on-a-class": c.PATH_CLASS + c.text("k") + c.NONE + pickle.SETITEM,
    "append-on-a-class": c.global_("collections", "OrderedDict") + c.NONE + pickle.APPEND,
    "nested-tuple-key": c.dict_((c.tuple_(c.tuple_(c.tuple_())), c.NONE)),
}


@pytest.mark.parametrize("attack", [*BUILDS.values()], ids=[*BUILDS])
def test_build_on_anything_but_a_fresh_record_is_refused(
    attack: bytes, checkpoint: Path, real_metadata: bytes, untouched: None
) -> None:
    error = read_with(checkpoint, c.injected(attack, real_metadata))
    assert error.reason == "pickle" and "refused BUILD" in str(error), error
    assert "checkpoint.allow_pickle: true" in str(error) and str(checkpoint) in str(error)


@pytest.mark.parametrize("attack", [*REDUCES.values()], ids=[*REDUCES])
def test_reduce_only_as_dcp_save_calls_each_constructor(
    attack: bytes, checkpoint: Path, real_metadata: bytes, untouched: None
) -> None:
    error = read_with(checkpoint, c.injected(attack, real_metadata))
    assert error.reason == "pickle" and "refused" in str(error), error


@pytest.mark.parametrize("attack", [*OTHERS.values()], ids=[*OTHERS])
def test_code_and_misused_containers_are_refused(
    attack: bytes, checkpoint: Path, real_metadata: bytes, untouched: None
) -> None:
    error = read_with(checkpoint, c.injected(attack, real_metadata))
    assert error.reason == "pickle" and "refused" in str(error), error


def test_foreign_global_names_the_global(checkpoint: Path, real_metadata: bytes) -> None:
    attack = c.reduce(c.global_("os", "system"), c.text("id"))
    error = read_with(checkpoint, c.injected(attack, real_metadata))
    assert error.reason == "pickle" and "refused global os.system" in str(error)


@pytest.mark.parametrize(
    ("length_field", "size"),
    [(pickle.BINUNICODE8, 1 << 40), (pickle.BINBYTES8, 1 << 40), (pickle.FRAME, 1 << 40)],
    ids=["str-1TB", "bytes-1TB", "frame-1TB"],
)
def test_a_length_field_cannot_ask_for_gigabytes(
    length_field: bytes, size: int, checkpoint: Path
) -> None:
    metadata = pickle.PROTO + b"\x04" + length_field + struct.pack("<Q", size) + b"x" * 64
    error = read_with(checkpoint, metadata)
    assert error.reason == "corrupt" and f"{size} bytes" in str(error)


@pytest.mark.parametrize(
    "writer", [writers.write_dcp, writers.write_dcp_flat], ids=["nested", "flat"]
)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_real_metadata_loads_as_pickle_loads_it(
    writer: Any, protocol: int, tmp_path: Path, untouched: None
) -> None:
    """What ``dcp.save`` writes (protocol 4), and the same values at every other protocol,
    the shapes older writers used: ``copyreg._reconstructor`` (0, 1), REDUCE of sets and
    ``OrderedDict`` (2, 3)."""
    folder = writer(tmp_path, writers.trained_net())
    real = pickle.loads((folder / ".metadata").read_bytes())
    data = pickle.dumps(real, protocol=protocol)
    assert MetadataUnpickler(io.BytesIO(data)).load() == real
    (folder / ".metadata").write_bytes(data)
    assert read_checkpoint(folder, CheckpointConfig()).state_dict


def test_dcp_values_other_pickles_write_load() -> None:
    values = {
        "set": {1, "a"},
        "frozenset": frozenset({2.5}),
        "ordered": collections.OrderedDict(a=[1, (2, 3)]),
        "path": pathlib.PurePosixPath("a/b"),
        "layout": torch.sparse_coo,
        "dtype": torch.bfloat16,
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(values, protocol=protocol)
        assert MetadataUnpickler(io.BytesIO(data)).load() == values, protocol
