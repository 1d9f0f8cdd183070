"""What DCP's ``.metadata`` may build: the allowlist behind ``dcp_unpickler``.

Three lists, each as short as what ``dcp.save`` writes (torch 2.4-2.13, and the protocol 0-3
forms of the same values): the globals a pickle may name (``find_global``), the constructors
REDUCE may call and the arguments each takes (``CONSTRUCTORS``, ``construct_enum``), and the
values that may be hashed (``plain_key``). Everything else is ``Refused``, named for the
operator without ``repr``-ing it, since a crafted value's repr may recurse or be huge.
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import enum
import functools
import importlib
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import torch

DIMS_LIMIT = 64  # dimensions of one torch.Size, items of one hashed tuple
PATH_LIMIT = 1 << 16  # characters in all paths (DCP writes one: the checkpoint_id)
DCP_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
PATHS: frozenset[type] = frozenset(
    {pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath}
    | {pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath}
)
PATH_IDS = frozenset(map(id, PATHS))
_SCALARS = frozenset({type(None), bool, float, str, bytes})
_RECONSTRUCTOR: Any = getattr(copyreg, "_reconstructor")  # noqa: B009 (private, untyped)
_CONTAINERS: dict[tuple[str, str], Any] = {  # what pickles of protocols 0-3 name
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _RECONSTRUCTOR,
}


class Refused(pickle.UnpicklingError):
    """What the file asked for that DCP never writes; ``what`` names it for the operator."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"refused {what}")


def name_of(value: object) -> str:
    """A short name for a value in a refusal: its class, or ``the class X`` for a class."""
    kind = value if isinstance(value, type) else type(value)
    prefix = "the class " if isinstance(value, type) else ""
    return f"{prefix}{kind.__module__}.{kind.__qualname__}"


def is_record_type(value: object) -> bool:
    """One of DCP's dataclasses (``Metadata``, ``TensorStorageMetadata``, ``MetadataIndex``...)."""
    return isinstance(value, type) and _is_record_class(value)


@functools.cache
def _is_record_class(value: type) -> bool:
    return dataclasses.is_dataclass(value) and value.__module__.startswith(DCP_MODULES)


def find_global(module: str, name: str) -> Any:
    """The object a GLOBAL names, if DCP's metadata may name it; else UnpicklingError in the
    wording ``pickles.refused_global`` reads, so the refusal names the global."""
    found: Any = None
    if module == "torch" and name == "Size":
        found = torch.Size
    elif module == "torch":
        candidate = getattr(torch, name, None)
        if isinstance(candidate, (torch.dtype, torch.layout, torch.memory_format)):
            found = candidate
    elif (module, name) == ("torch.serialization", "_get_layout"):
        found = torch.serialization._get_layout
    elif (module, name) in _CONTAINERS:
        found = _CONTAINERS[module, name]
    elif module in ("pathlib", "pathlib._local"):
        candidate = getattr(pathlib, name, None)
        found = candidate if candidate in PATHS else None
    elif module.startswith(DCP_MODULES):
        candidate = getattr(importlib.import_module(module), name, None)
        if is_record_type(candidate) or (
            isinstance(candidate, enum.EnumMeta) and candidate.__module__.startswith(DCP_MODULES)
        ):
            found = candidate
    if found is None:
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
    return found


def _plain(value: object) -> bool:
    """A value whose hash is cheap and shallow: a scalar, a dtype, an enum or a torch.Size
    (``_size`` builds those from ints only). Big ints are not: they rehash at every use."""
    if type(value) is int:
        return -(1 << 64) < value < 1 << 64
    return type(value) in _SCALARS or isinstance(value, (enum.Enum, torch.dtype, torch.Size))


def plain_key(value: object) -> bool:
    """What may be hashed while unpickling: a plain value, a short tuple of them, or a DCP
    record (``MetadataIndex``) holding them. Hashing is where a crafted pickle bites: a
    tuple nested 100 000 deep overflows the C stack, and tuples shared 40 levels deep take
    hours to hash."""
    if type(value) is str or _plain(value):
        return True
    if type(value) is tuple:
        return len(value) <= DIMS_LIMIT and all(_plain(item) for item in value)
    if is_record_type(type(value)):
        return all(_plain(item) for item in vars(value).values())
    return False


def construct_enum(func: object, args: tuple[Any, ...]) -> Any:
    """``_MEM_FORMAT_ENCODING(0)``: a DCP enum looked up by value, never the functional API."""
    if not isinstance(func, enum.EnumMeta) or not func.__module__.startswith(DCP_MODULES):
        raise Refused(f"REDUCE of {name_of(func)}")
    if len(args) != 1 or type(args[0]) not in (int, str):
        raise Refused(f"REDUCE of {name_of(func)} other than a lookup by value")
    return func(args[0])


def _size(args: tuple[Any, ...]) -> torch.Size:
    if len(args) != 1 or type(args[0]) is not tuple or len(args[0]) > DIMS_LIMIT:
        raise Refused("REDUCE of torch.Size with other than one short tuple")
    if not all(type(dim) is int and 0 <= dim < 1 << 63 for dim in args[0]):
        raise pickle.UnpicklingError("a torch.Size with a dimension that is not a size")
    return torch.Size(args[0])


def _layout(args: tuple[Any, ...]) -> Any:
    if len(args) != 1 or type(args[0]) is not str or len(args[0]) > 64:
        raise Refused("REDUCE of torch.serialization._get_layout with other than a name")
    return torch.serialization._get_layout(args[0])  # type: ignore[no-untyped-call]


def _ordered_dict(args: tuple[Any, ...]) -> collections.OrderedDict[Any, Any]:
    if args:
        raise Refused("REDUCE of collections.OrderedDict with arguments")
    return collections.OrderedDict()


def _items(args: tuple[Any, ...]) -> list[Any]:
    if len(args) > 1 or (args and type(args[0]) is not list):
        raise Refused("REDUCE of a set with other than one list")
    items = list(args[0]) if args else []
    if not all(plain_key(item) for item in items):
        raise Refused("a set item that is not a plain value")
    return items


def _reconstruct(args: tuple[Any, ...]) -> Any:
    """``copyreg._reconstructor(cls, object, None)``: protocol 0/1's way to make a bare
    instance, allowed for DCP's dataclasses only."""
    if (
        len(args) != 3
        or not is_record_type(args[0])
        or args[1] is not object
        or args[2] is not None
    ):
        raise Refused("REDUCE of copyreg._reconstructor other than for a DCP record")
    return object.__new__(args[0])


def _path(kind: type) -> Callable[[tuple[Any, ...]], Any]:
    def construct(args: tuple[Any, ...]) -> Any:
        if not all(type(part) is str for part in args):
            raise Refused(f"REDUCE of {name_of(kind)} with other than strings")
        return kind(*args)

    return construct


CONSTRUCTORS: dict[int, Callable[[tuple[Any, ...]], Any]] = {  # id(callable) -> constructor
    id(torch.Size): _size,
    id(torch.serialization._get_layout): _layout,
    id(collections.OrderedDict): _ordered_dict,
    id(set): lambda args: set(_items(args)),
    id(frozenset): lambda args: frozenset(_items(args)),
    id(_RECONSTRUCTOR): _reconstruct,
    **{id(kind): _path(kind) for kind in PATHS},
}
