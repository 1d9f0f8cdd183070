"""What a pickle would cost to load, read from its opcodes before torch unpickles it.

torch's weights-only unpickler refuses code, but not cost, and TorchScript's C++ unpickler
neither. Small, code-free pickles end the daemon with what both allow (tuples, lists, dicts,
sets, memo):

- values nested 200 000 deep (200 kB): TorchScript's unpickler recurses in C++, and CPython
  hashes a nested tuple used as a dict key recursively in C; either overflows the stack and
  the process dies of SIGSEGV (our own walk of nested dicts would raise RecursionError);
- forty tuples each holding the one before twice (1 kB) used as a key: hashing it visits
  2**40 items, hours of CPU in one ``torch.load``.

``Scan`` replays the opcodes on a model of the stack that keeps, per value, how deep values
nest in it (raised along every container that holds it, when something is added later) and
how many items hashing it would visit, and charges every place unpickling hashes (dict keys,
set items, the arguments of a REDUCE such as ``set(list)``). Real checkpoints nest a dozen
levels and hash thousands of items, far inside the limits. A pickle the model cannot parse is
left to torch, which reports it in its own words.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from typing import IO, Any

from monitor.checkpoints.payload import ZIP_ERRORS

DEPTH_LIMIT = 256  # values within values; C and C++ recursion fails at about 100 000
HASH_LIMIT = 1 << 24  # items visited by every hash while unpickling, all together
STEP_LIMIT = 1 << 24  # depth updates the model may make (a budget for the model itself)
VALUE_LIMIT = 1 << 30  # bytes of one string or bytes value (tensors are stored outside)
_MARK = "mark"
_TUPLES = frozenset({"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"})
_CONTAINERS = _TUPLES | {"EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT", "EMPTY_SET"}
_HOLDERS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "BINPERSID", "OBJ", "INST"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_FILLS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"})
_BELOW = {  # opcode -> (values it pops below a MARK, or all it pops; whether it pops a MARK)
    op.name: (
        [item.name for item in op.stack_before].index(_MARK)
        if _MARK in [item.name for item in op.stack_before]
        else len(op.stack_before),
        _MARK in [item.name for item in op.stack_before],
    )
    for op in pickletools.opcodes
}
_PUSHED = {op.name: len(op.stack_after) for op in pickletools.opcodes}
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLES = 5  # magic number, protocol, system info, the objects, the storage keys


class _Value:
    """One value on the modelled stack: how deep values nest in it, what hashing it visits,
    the values it holds (a tuple's, a list's, which may grow) and the values holding it."""

    __slots__ = ("depth", "items", "parents", "size")

    def __init__(self, size: int = 1, items: list[_Value] | None = None) -> None:
        self.size = size
        self.depth = 0
        self.items = items
        self.parents: list[_Value] | None = None


class _TooLarge(ValueError):
    """A length field asking for more than ``VALUE_LIMIT`` bytes."""


class _Bounded:
    """A pickle as the model reads it: no single read or line over ``VALUE_LIMIT``, nor past
    the pickle's end (``remaining`` bytes), so that a length field cannot make the scan read
    gigabytes of a sparse file, and a value torch's C++ unpickler would allocate before
    finding the data short (2 GB for one flipped bit) is caught."""

    def __init__(self, handle: IO[bytes], remaining: int) -> None:
        self._handle = handle
        self._remaining = remaining

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes; a few past the end read short (a truncated pickle, for torch to
        report), many past it are a length field no loader should trust."""
        if size < 0 or size > VALUE_LIMIT or size > max(self._remaining, 64):
            raise _TooLarge(f"a value of {size} bytes where {self._remaining} remain")
        data = self._handle.read(size)
        self._remaining -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._handle.readline(min(VALUE_LIMIT, self._remaining) + 1)
        if len(line) > VALUE_LIMIT:
            raise _TooLarge(f"a line of over {VALUE_LIMIT} bytes")
        self._remaining -= len(line)
        return line


class Scan:
    """The model of one or more pickles read in turn (a legacy ``torch.save`` file holds
    five); ``problem`` says what went past a limit, once something has."""

    def __init__(self) -> None:
        self.hashed = 0
        self.steps = 0
        self.problem: str | None = None

    def _charge(self, values: list[_Value]) -> None:
        self.hashed += sum(value.size for value in values)
        if self.hashed > HASH_LIMIT:
            self.problem = f"hashing its keys visits over {HASH_LIMIT} items"

    def _nest(self, holder: _Value, values: list[_Value]) -> None:
        """``values`` are now inside ``holder``: raise its depth, and its holders' in turn."""
        pending = []
        for value in values:
            if value.parents is None:
                value.parents = []
            value.parents.append(holder)
            pending.append((holder, value.depth + 1))
        while pending and self.problem is None:
            value, depth = pending.pop()
            if depth <= value.depth:
                continue
            value.depth = depth
            self.steps += 1
            if depth > DEPTH_LIMIT:
                self.problem = f"values nested over {DEPTH_LIMIT} deep (or in a cycle)"
            elif self.steps > STEP_LIMIT:
                self.problem = f"nesting that takes over {STEP_LIMIT} steps to follow"
            pending.extend((parent, depth + 1) for parent in value.parents or ())

    def _container(self, name: str, items: list[_Value]) -> _Value:
        if name in ("FROZENSET", "DICT"):
            self._charge(items if name == "FROZENSET" else items[::2])
        value = _Value(1 + sum(item.size for item in items), list(items))
        self._nest(value, items)
        return value

    def read(self, source: IO[bytes], remaining: int) -> None:
        """Model one pickle from ``source`` (``remaining`` bytes at most), which is left just
        after its STOP."""
        stack: list[_Value] = []
        marks: list[int] = []
        memo: dict[object, _Value] = {}
        try:
            bounded: Any = _Bounded(source, remaining)  # genops needs read() and readline()
            for opcode, arg, _ in pickletools.genops(bounded):
                self._step(opcode, arg, stack, marks, memo)
                if self.problem is not None:
                    return
        except _TooLarge as exc:
            self.problem = str(exc)
        except (ValueError, IndexError, KeyError, TypeError, EOFError):
            return  # not a pickle this model follows: torch will say what is wrong

    def _step(
        self,
        opcode: pickletools.OpcodeInfo,
        arg: object,
        stack: list[_Value],
        marks: list[int],
        memo: dict[object, _Value],
    ) -> None:
        name = opcode.name
        if name == "MARK":
            marks.append(len(stack))
            return
        if name in _PUTS or name == "MEMOIZE":
            memo[arg if name in _PUTS else len(memo)] = stack[-1]
            return
        if name in _GETS:
            stack.append(memo[arg])
            return
        if name == "DUP":
            stack.append(stack[-1])
            return
        sliced: list[_Value] = []
        below, marked = _BELOW[name]
        if marked:
            start = marks.pop()
            sliced = stack[start:]
            del stack[start:]
        popped = stack[len(stack) - below :] if below else []
        del stack[len(stack) - below :]
        if name in _CONTAINERS:
            stack.append(self._container(name, sliced or popped))
            return
        if name in _FILLS:
            target, added = popped[0], popped[1:] + sliced
            if name in ("SETITEM", "SETITEMS"):
                self._charge(added[::2])
            elif name == "ADDITEMS":
                self._charge(added)
            elif target.items is not None:
                target.items.extend(added)
                target.size += sum(item.size for item in added)
            self._nest(target, added)
            stack.append(target)
        elif name == "BUILD":
            self._nest(popped[0], popped[1:])
            stack.append(popped[0])
        elif name in _HOLDERS:  # what a constructor makes holds what it was given
            if name == "REDUCE" and popped[1].items is not None:
                self._charge(popped[1].items)  # set(list), Counter(list): hash the items
            made = _Value()
            self._nest(made, popped + sliced)
            stack.append(made)
        else:
            stack.extend(_Value() for _ in range(_PUSHED[name]))


def scan_torch_save(handle: IO[bytes], members: tuple[str, ...] = ("data.pkl",)) -> str | None:
    """What is wrong with the pickles a ``torch.load`` of ``handle`` would unpickle, if
    anything; ``handle`` is left where it was.

    A zip archive (``torch.save`` since 1.6) unpickles its ``data.pkl``; TorchScript also
    ``constants.pkl`` and its ``.debug_pkl`` files (``members``: name endings). Every member
    so named is modelled, since zip readers disagree on duplicates, and an archive Python
    cannot open is refused, so that no reader sees a member this one did not. The legacy
    format is five pickles in a row, then raw storage bytes.
    """
    start = handle.tell()
    end = handle.seek(0, io.SEEK_END)
    handle.seek(start)
    scan = Scan()
    try:
        if handle.read(4) != _ZIP_MAGIC:
            handle.seek(start)
            for _ in range(_LEGACY_PICKLES):
                scan.read(handle, end - handle.tell())
                if scan.problem is not None:
                    break
            return scan.problem
        handle.seek(start)
        try:
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    if info.filename.rsplit("/", 1)[-1].endswith(members):
                        with archive.open(info) as member:
                            scan.read(member, info.file_size)
                        if scan.problem is not None:
                            break
        except ZIP_ERRORS as exc:
            return f"not a readable zip archive ({exc})"
        return scan.problem
    finally:
        handle.seek(start)
