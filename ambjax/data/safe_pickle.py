"""Reading untrusted feature pickles: only builtins and numpy arrays, bounded in size and depth.

Feature files come from strangers. `read_pickle`:

- resolves only builtin containers and scalars, numpy arrays, dtypes and scalars (Python 2
  names and `latin1` strings included); anything else (code, other classes) is refused;
- bounds every allocation a file can ask for by the file's own size: no `bytes(n)` /
  `bytearray(n)` from an integer, no `numpy.ndarray(shape)` call, and array reconstruction
  (`_reconstruct`, protocol 5's `_frombuffer`) only up to the bytes the file holds, so a tiny
  file cannot make the loader allocate gigabytes;
- refuses structures nested deeper than `MAX_DEPTH` levels before building them (a scan of the
  pickle's opcodes), so a deeply nested file is an error message, not a crash in code that
  hashes or prints it;
- reads protocols 0-5, including protocol 5's in-band numpy buffers.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
from typing import Any, Callable

import numpy as np

from ambjax.data.dataset import DataFormatError

MAX_DEPTH = 64
_SLACK_BYTES = 1 << 16   # allocation allowed beyond the file size (headers, tiny arrays)

_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "complex",
             "bool", "object"}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")


class _Guarded:
    """A callable standing in for a builtin or numpy function whose arguments are checked."""

    def __init__(self, name: str, call: Callable[..., Any]):
        self.name, self.call = name, call

    def __call__(self, *args):
        return self.call(*args)

    def __reduce__(self):  # never pickled back; keeps repr and errors readable
        raise TypeError(f"guarded {self.name}")


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, budget: int):
        super().__init__(file, encoding="latin1")
        self.budget = budget

    def _check_size(self, count: int, itemsize: int, what: str) -> None:
        if count * itemsize > self.budget:
            raise pickle.UnpicklingError(
                f"{what} asks for {count * itemsize:,} bytes, more than the file holds")

    def _bytes(self, kind):
        def make(*args):
            if args and isinstance(args[0], (int, np.integer)):
                raise pickle.UnpicklingError(f"refusing {kind.__name__}(n) from a number")
            return kind(*args)
        return _Guarded(kind.__name__, make)

    def _reconstruct(self, real):
        def make(subtype, shape, dtype):
            if isinstance(subtype, _Guarded) or subtype is not np.ndarray:
                subtype = np.ndarray
            dims = shape if isinstance(shape, tuple) else np.atleast_1d(shape)
            shape = tuple(int(s) for s in dims)
            if any(s < 0 for s in shape):
                raise pickle.UnpicklingError(f"array shape {shape} is negative")
            self._check_size(math.prod(shape), np.dtype(dtype).itemsize,
                             f"an array of shape {shape}")
            return real(subtype, shape, dtype)
        return _Guarded("_reconstruct", make)

    def _frombuffer(self, real):
        def make(buffer, dtype, shape, order):
            dtype = np.dtype(dtype)
            if dtype.hasobject:
                raise pickle.UnpicklingError("refusing an object array from a buffer")
            return real(buffer, dtype, shape, order)
        return _Guarded("_frombuffer", make)

    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("__builtin__", "builtins")   # Python 2 / protocol <= 2 names
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if module == "builtins" and name in ("bytes", "bytearray"):
            return self._bytes(bytes if name == "bytes" else bytearray)
        if module in _NUMPY_MODULES and name == "_reconstruct":
            return self._reconstruct(super().find_class(module, name))
        if module in _NUMPY_MODULES and name == "scalar":
            return super().find_class(module, name)
        if module in _NUMERIC_MODULES and name == "_frombuffer":
            return self._frombuffer(super().find_class(module, name))
        if module == "numpy" and name == "ndarray":
            # only an argument of _reconstruct; calling it would allocate any requested shape
            return _Guarded("ndarray", _refuse_ndarray_call)
        if (module, name) in (("numpy", "dtype"), ("collections", "OrderedDict"),
                              ("_codecs", "encode")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: feature files hold only builtins and numpy arrays")


def _refuse_ndarray_call(*_):
    raise pickle.UnpicklingError("refusing a direct numpy.ndarray(...) call")


_ATOMS = {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG",
          "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
          "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES",
          "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "GLOBAL", "EXT1", "EXT2", "EXT4",
          "PERSID"}
_EMPTY = {"EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"}
_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"}
_INTO_TOP_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_MEMO = _PUT | _GET
_SMALL_TUPLE = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_LINE, _TWO_LINES = -1, -10        # argument sizes besides fixed byte counts (>= 0)
_LENGTH_BYTES = {-2: (1, False), -3: (4, True), -4: (4, False), -5: (8, False)}


def _opcode_table() -> dict[int, tuple[str, int]]:
    """Opcode byte -> (name, argument size): bytes (>= 0), a line, two lines, or a length
    prefix (`pickletools`' codes -2..-5)."""
    table = {}
    for op in pickletools.opcodes:
        size = 0 if op.arg is None else op.arg.n
        if op.arg is not None and op.arg.name == "stringnl_noescape_pair":
            size = _TWO_LINES
        table[ord(op.code)] = (op.name, size)
    return table


_OPCODES = _opcode_table()


def _opcodes(data: bytes):
    """(name, memo key or None) of each opcode of `data` up to STOP: `pickletools.genops`
    without decoding the arguments that the nesting check does not read (several times
    faster on feature files of many arrays).

    Raises:
      ValueError: an unknown opcode, or data that ends before STOP.
    """
    pos, end = 0, len(data)
    table, find = _OPCODES, data.find
    while pos < end:
        entry = table.get(data[pos])
        if entry is None:
            raise ValueError(f"unknown opcode {data[pos]:#x} at byte {pos}")
        name, size = entry
        pos += 1
        key = None
        if size > 0:
            if name in _MEMO:
                key = int.from_bytes(data[pos:pos + size], "little")
            pos += size
        elif size == _LINE or size == _TWO_LINES:
            for _ in range(1 if size == _LINE else 2):
                line_end = find(b"\n", pos)
                if line_end < 0:
                    raise ValueError(f"{name} at byte {pos - 1}: no end of line")
                if name in _MEMO:
                    key = int(data[pos:line_end])
                pos = line_end + 1
        elif size < 0:
            width, signed = _LENGTH_BYTES[size]
            length = int.from_bytes(data[pos:pos + width], "little", signed=signed)
            if length < 0:
                raise ValueError(f"{name} at byte {pos - 1}: negative length")
            pos += width + length
        if pos > end:
            raise ValueError("pickle ends inside an opcode's argument")
        yield name, key
        if name == "STOP":
            return
    raise ValueError("pickle exhausted before seeing STOP")


def check_nesting(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError if the pickle `data` builds containers nested deeper than `max_depth`.

    Simulates the unpickler's stack on depths only (each stack item is a one-element list, so
    that memo references see later appends), without building any object.
    """
    stack: list[list[int]] = []
    marks: list[int] = []
    memo: dict[Any, list[int]] = {}

    def push(depth: int) -> None:
        if depth > max_depth:
            raise ValueError(f"structures nested more than {max_depth} levels deep")
        stack.append([depth])

    def pop_mark() -> list[list[int]]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def deepest(items) -> int:
        return max([c[0] for c in items], default=0)

    def grow(cell: list[int], depth: int) -> None:
        if depth > max_depth:
            raise ValueError(f"structures nested more than {max_depth} levels deep")
        cell[0] = max(cell[0], depth)

    # the branches in the order of their frequency in feature files of many arrays
    for name, arg in _opcodes(data):
        if name in _PUT:
            memo[arg] = stack[-1]
        elif name in _GET:
            if arg not in memo:
                raise ValueError(f"memo key {arg!r} read before it is written")
            stack.append(memo[arg])
        elif name in _ATOMS:
            stack.append([0])
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            stack.pop()
            push(args[0])
        elif name in _SMALL_TUPLE:
            depth = stack.pop()[0]
            for _ in range(_SMALL_TUPLE[name] - 1):
                depth = max(depth, stack.pop()[0])
            push(depth + 1)
        elif name == "MARK":
            marks.append(len(stack))
        elif name in _FROM_MARK:
            push(deepest(pop_mark()) + 1)
        elif name in _EMPTY:
            push(1)
        elif name == "APPEND":
            value = stack.pop()
            grow(stack[-1], value[0] + 1)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            grow(stack[-1], max(value[0], key[0]) + 1)
        elif name in _INTO_TOP_FROM_MARK:
            items = pop_mark()
            grow(stack[-1], deepest(items) + 1)
        elif name == "NEWOBJ_EX":
            kwargs, args = stack.pop(), stack.pop()
            stack.pop()
            push(max(args[0], kwargs[0]))
        elif name == "BUILD":
            state = stack.pop()
            grow(stack[-1], state[0])
        elif name == "STACK_GLOBAL":
            del stack[-2:]
            push(0)
        elif name in ("BINPERSID", "NEXT_BUFFER"):
            if name == "BINPERSID":
                stack.pop()
            push(0)
        elif name == "READONLY_BUFFER":
            pass
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        # PROTO, FRAME, STOP: no stack effect


def read_pickle(path: str | os.PathLike) -> Any:
    """Unpickle `path` within the limits described in the module docstring.

    Raises:
      DataFormatError: missing, unreadable, truncated or non-pickle file; one that references
        anything other than builtin containers and numpy arrays; one that asks for more memory
        than it holds or nests deeper than `MAX_DEPTH`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read file: {e}") from None
    try:
        check_nesting(data)
        return _Unpickler(io.BytesIO(data), budget=len(data) + _SLACK_BYTES).load()
    except RecursionError:
        raise DataFormatError(f"{path}: structures nested too deeply to be a feature file") \
            from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable feature pickle "
                              f"(truncated, corrupt or hostile?): {type(e).__name__}: {e}") \
            from None
