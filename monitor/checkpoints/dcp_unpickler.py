"""DCP's ``.metadata`` index, unpickled so that the file can change nothing in this process.

``dcp.save`` writes ``.metadata`` with plain ``pickle`` at protocol 4. torch's weights-only
unpickler, the well-kept choice, reads protocol 2 opcodes only: on every real file it stops at
the first FRAME ("Unsupported operand 149", torch 2.4-2.13). So this module keeps its own,
the standard library's pure-Python unpickler with every opcode that calls code replaced
(what each may build is listed in ``dcp_allowed``):

- BUILD only on an *instance* of one of DCP's dataclasses, setting plain attribute names;
  never on a class, function or module-level object, which is how a crafted file could set
  ``pathlib.PosixPath.__truediv__`` (every path join in the daemon then fails) or poison
  ``torch.serialization._get_layout.cache`` (every later ``torch.load``);
- REDUCE only of the constructors DCP's values use, each with the arguments it takes;
- NEWOBJ only of DCP's dataclasses; no INST, OBJ, NEWOBJ_EX, extensions or persistent ids;
- dict and set operations only on dicts and sets, hashing only plain values;
- each argument tuple and state used once, and any one value, line or frame read at most
  ``VALUE_LIMIT`` bytes, so that neither shared values nor a sparse file's length fields can
  make the daemon build or read gigabytes.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import pickletools
from collections.abc import Callable
from typing import IO, Any

from monitor.checkpoints.dcp_allowed import (
    CONSTRUCTORS,
    PATH_IDS,
    PATH_LIMIT,
    Refused,
    construct_enum,
    find_global,
    is_record_type,
    name_of,
    plain_key,
)

VALUE_LIMIT = 64 << 20  # bytes in any one string, bytes value, text line or frame
_STATE_LIMIT = 32  # attributes one BUILD may set (DCP's dataclasses have at most seven)
_PLAIN_OPCODES = (  # data, stack and memo opcodes: they build values and call nothing
    *("PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "GLOBAL", "STACK_GLOBAL"),
    *("NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1"),
    *("LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES"),
    *("SHORT_BINBYTES", "BINBYTES8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE"),
    *("BINUNICODE8", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST"),
    *("LIST", "EMPTY_DICT", "EMPTY_SET", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT"),
    *("LONG_BINPUT", "MEMOIZE"),
)
_CODES = {op.name: ord(op.code) for op in pickletools.opcodes}


class _Bounded:
    """The file as the unpickler reads it: no single read or line beyond ``VALUE_LIMIT``,
    so a length field (or a line without an end) in a sparse file cannot ask for gigabytes."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def read(self, size: int) -> bytes:
        if not 0 <= size <= VALUE_LIMIT:
            raise pickle.UnpicklingError(f"a value or frame of {size} bytes")
        return self._handle.read(size)

    def readline(self) -> bytes:
        line = self._handle.readline(VALUE_LIMIT + 1)
        if len(line) > VALUE_LIMIT:
            raise pickle.UnpicklingError(f"a line over {VALUE_LIMIT} bytes")
        return line


class MetadataUnpickler(pickle._Unpickler):
    """Builds only what ``dcp.save`` writes; see the module docstring for what it refuses."""

    proto: int  # the pure-Python unpickler's own state, which typeshed leaves out
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__(_Bounded(handle))
        self._once: dict[int, object] = {}  # id -> value, kept alive so ids stay unique
        self._path_chars = 0

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # protocols 0-2 write Python 2's names (copy_reg, __builtin__)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return find_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id")

    def _consume(self, value: object, what: str) -> None:
        """Each argument tuple, state and record is used once, as ``pickle`` writes them, so
        no constructor can multiply what the file holds (``()`` is one shared object)."""
        if type(value) is tuple and not value:
            return
        if id(value) in self._once:
            raise Refused(f"{what} of a value already used")
        self._once[id(value)] = value

    def _keys(self, keys: list[Any]) -> None:
        """Allow hashing ``keys``; a record used as a key may not be built afterwards."""
        if not all(plain_key(key) for key in keys):
            raise Refused("a dict key or set item that is not a plain value")
        for key in keys:
            if is_record_type(type(key)):
                self._once[id(key)] = key

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if type(args) is not tuple:
            raise pickle.UnpicklingError("REDUCE needs a tuple of arguments")
        self._consume(args, "REDUCE")
        if id(func) in PATH_IDS:
            self._path_chars += sum(len(part) for part in args if type(part) is str)
            if self._path_chars > PATH_LIMIT:
                raise pickle.UnpicklingError(f"paths of over {PATH_LIMIT} characters")
        constructor = CONSTRUCTORS.get(id(func))
        self.stack[-1] = construct_enum(func, args) if constructor is None else constructor(args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not is_record_type(cls):
            raise Refused(f"NEWOBJ of {name_of(cls)}")
        if type(args) is not tuple or args:
            raise Refused(f"NEWOBJ of {name_of(cls)} with arguments")
        self.append(cls.__new__(cls))

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if not is_record_type(kind):  # a class, function or path: never changed
            raise Refused(f"BUILD on {name_of(inst)}")
        self._consume(inst, "BUILD")  # once, and not after its use as a key
        self._consume(state, "BUILD")
        setstate = getattr(kind, "__setstate__", None)
        if setstate is not None:  # DCP's own (TensorProperties), on its own instance
            setstate(inst, state)
            return
        if type(state) is not dict or len(state) > _STATE_LIMIT:
            raise Refused(f"BUILD of {name_of(inst)} from a {name_of(state)}")
        for key in state:
            if type(key) is not str or not key.isidentifier() or key.startswith("__"):
                raise Refused(f"BUILD of {name_of(inst)} setting a non-field attribute")
        inst.__dict__.update(state)

    def _setitems(self) -> None:
        items = self.pop_mark()
        self._into_dict(items)

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._into_dict([key, value])

    def _into_dict(self, items: list[Any]) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise Refused(f"SETITEM on {name_of(target)}")
        self._keys(items[::2])
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    def _dict(self) -> None:
        items = self.pop_mark()
        self._keys(items[::2])
        self.append({items[index]: items[index + 1] for index in range(0, len(items), 2)})

    def _frozenset(self) -> None:
        items = self.pop_mark()
        self._keys(items)
        self.append(frozenset(items))

    def _additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise Refused(f"ADDITEMS on {name_of(target)}")
        self._keys(items)
        target.update(items)

    def _appends(self) -> None:
        items = self.pop_mark()
        self._into_list(items)

    def _append(self) -> None:
        self._into_list([self.stack.pop()])

    def _into_list(self, items: list[Any]) -> None:
        target = self.stack[-1]
        if not isinstance(target, list):
            raise Refused(f"APPEND on {name_of(target)}")
        target.extend(items)


def _refuse_opcode(self: MetadataUnpickler) -> None:
    raise Refused("an opcode DCP metadata never uses (code, extensions or buffers)")


_DISPATCH: dict[int, Callable[[Any], None]] = {
    **dict.fromkeys(range(256), _refuse_opcode),
    **{_CODES[name]: pickle._Unpickler.dispatch[_CODES[name]] for name in _PLAIN_OPCODES},
    _CODES["REDUCE"]: MetadataUnpickler._reduce,
    _CODES["NEWOBJ"]: MetadataUnpickler._newobj,
    _CODES["BUILD"]: MetadataUnpickler._build,
    _CODES["SETITEM"]: MetadataUnpickler._setitem,
    _CODES["SETITEMS"]: MetadataUnpickler._setitems,
    _CODES["DICT"]: MetadataUnpickler._dict,
    _CODES["FROZENSET"]: MetadataUnpickler._frozenset,
    _CODES["ADDITEMS"]: MetadataUnpickler._additems,
    _CODES["APPEND"]: MetadataUnpickler._append,
    _CODES["APPENDS"]: MetadataUnpickler._appends,
}
MetadataUnpickler.dispatch = _DISPATCH
