"""Pickles written opcode by opcode: the attacks a restricted unpickler must refuse.

``pickle.dumps`` cannot write them (it never BUILDs a class or REDUCEs with borrowed
arguments), so each is spelled out here with the standard library's opcode constants, at
protocol 2, which every unpickler reads. ``statement`` values leave one object on the stack;
``program`` runs several and returns the last; ``injected`` runs one before a real pickle, so
that an unpickler that lets it through goes on to load the real metadata undisturbed.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import torch

NONE = pickle.NONE
POP = pickle.POP


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def tuple_(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def list_(*items: bytes) -> bytes:
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS


def dict_(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(k + v for k, v in pairs) + pickle.SETITEMS


def reduce(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: REDUCE, pickle's way to call a constructor."""
    return func + tuple_(*args) + pickle.REDUCE


def build(target: bytes, state: bytes) -> bytes:
    """BUILD: ``target.__setstate__(state)``, or its ``__dict__`` updated, or for a
    ``(None, slots)`` state ``setattr(target, name, value)`` for each slot."""
    return target + state + pickle.BUILD


def slots(**values: bytes) -> bytes:
    """A BUILD state of ``(None, {name: value})``: plain pickle then calls setattr."""
    return tuple_(NONE, dict_(*((text(name), value) for name, value in values.items())))


def put(index: int) -> bytes:
    return pickle.BINPUT + bytes([index])


def get(index: int) -> bytes:
    return pickle.BINGET + bytes([index])


def program(*statements: bytes) -> bytes:
    """A complete pickle that runs each statement and returns the last one's value."""
    body = b"".join(statement + POP for statement in statements[:-1]) + statements[-1]
    return pickle.PROTO + b"\x02" + body + pickle.STOP


def injected(statement: bytes, real: bytes) -> bytes:
    """Run ``statement`` (discarding its value), then the real pickle ``real``."""
    return statement + POP + real


DCP = "torch.distributed.checkpoint.metadata"
PATH_CLASS = global_("pathlib", "PosixPath")
GET_LAYOUT = global_("torch.serialization", "_get_layout")
BREAK_PATH_JOINS = build(PATH_CLASS, slots(__truediv__=NONE))  # every `path / name` raises


# --- torch.save pickles: code-free, yet a crash or a stall for whoever hashes their keys ------


def deep_tuple_key(depth: int) -> bytes:
    """``{((((None,),),)...): 1}``, ``depth`` tuples deep: hashing the key recurses in C."""
    return (
        pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + NONE + pickle.TUPLE1 * depth
        + pickle.BININT1 + b"\x01" + pickle.SETITEM + pickle.STOP
    )  # fmt: skip


def shared_tuple_key(levels: int) -> bytes:
    """``{t: 1}`` with ``t[i + 1] = (t[i], t[i])``: 2**levels items to hash, in a kB."""
    body = b"".join(put(level) + get(level) + pickle.TUPLE2 for level in range(levels))
    return (
        pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + NONE + body
        + pickle.BININT1 + b"\x01" + pickle.SETITEM + pickle.STOP
    )  # fmt: skip


def torch_save_with(data_pkl: bytes) -> bytes:
    """A real ``torch.save`` archive whose ``data.pkl`` is replaced by ``data_pkl``."""
    real = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, real)
    out = io.BytesIO()
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def deep_dicts(depth: int) -> bytes:
    """``{"a": {"a": ...}}``, ``depth`` dicts deep: a walk that recurses runs out of stack."""
    return (
        pickle.PROTO + b"\x02" + (pickle.EMPTY_DICT + text("a")) * depth + pickle.EMPTY_DICT
        + pickle.SETITEM * depth + pickle.STOP
    )  # fmt: skip


def cyclic_dict() -> bytes:
    """``d = {}; d["a"] = d``: a walk that does not remember where it has been never ends."""
    return (
        pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + put(0) + text("a") + get(0)
        + pickle.SETITEM + pickle.STOP
    )  # fmt: skip


def shared_dicts(levels: int) -> bytes:
    """``d[i + 1] = {"a": d[i], "b": d[i]}``: 2**levels paths to walk, in a kB."""
    body = pickle.EMPTY_DICT + put(0)
    for level in range(1, levels + 1):
        body += pickle.EMPTY_DICT + text("a") + get(level - 1) + pickle.SETITEM
        body += text("b") + get(level - 1) + pickle.SETITEM + put(level)
    return pickle.PROTO + b"\x02" + body + pickle.STOP


def torchscript_with(pickled: bytes, scripted: bytes, member: str = "data.pkl") -> bytes:
    """The TorchScript archive ``scripted`` with its ``member`` replaced by ``pickled``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(scripted)) as source, zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info, pickled if info.filename.endswith("/" + member) else data)
    return out.getvalue()


def huge_string(length: int = 0x7FFFFFF0) -> bytes:
    """A pickle of one string that says it is ``length`` bytes long and holds 16."""
    return pickle.PROTO + b"\x02" + pickle.BINUNICODE + struct.pack("<I", length) + b"x" * 16
