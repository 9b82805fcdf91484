"""Bounding the work a pickle checkpoint can cause, before PyTorch unpickles it.

PyTorch's weights-only unpickler never runs code from a file, but it trusts the file's *shape*. A few
hundred bytes can describe a dict whose values are ten references to one dict, thirty levels down
(10^30 paths: anything that walks it never ends), a tuple nested a million deep (hashing it as a dict
key overflows the C stack and kills the process), a dict that contains itself, or a storage that claims
to be a terabyte long (allocated before its data is read). ``check_pickle_file`` reads the pickle's
opcodes itself, without building anything, and refuses such files with the limit that was hit.

It follows the opcodes ``torch._weights_only_unpickler`` accepts (the same stack and memo rules); an
opcode outside that set is left for PyTorch to refuse. Values are replaced by small stand-ins that
record only what the limits need: nesting, sharing, and the literal numbers of storage claims. The
limits are far above what real checkpoints use (an SD1.5 ``.ckpt``'s pickle holds about 15 000 items
nested 6 deep) and low enough that a refusal comes within a few seconds.
"""

from __future__ import annotations

import gc
import mmap
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from ipa_studio.core.errors import ModelFileError, UnsafeFileError

MAX_PICKLE_BYTES = 64 << 20
"""The pickle part of a checkpoint (``data.pkl``); real ones are a few hundred KB."""
MAX_OPS = 2_000_000
"""Pickle instructions; a 4 000-tensor training checkpoint (weights, EMA, optimizer) has about 110 000."""
MAX_DEPTH = 100
"""Containers inside containers; real checkpoints nest fewer than 20 deep."""
MAX_ITEMS = 5_000_000
"""Items met when the result is walked as a tree (shared parts counted each time they are met)."""

_UNPACK_I = struct.Struct("<i").unpack_from
_UNPACK_U = struct.Struct("<I").unpack_from
_UNPACK_H = struct.Struct("<H").unpack_from

# Bytes per element of the storage classes PyTorch pickles (torch.FloatStorage → 4 …).
_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
}


class _Node:
    """A stand-in for one container or object the unpickler would build."""

    __slots__ = ("kind", "items", "tuple_depth", "state", "size", "depth")

    def __init__(self, kind: str, items: list[Any] | None = None, tuple_depth: int = 0) -> None:
        self.kind = kind  # "list", "dict", "set", "tuple", "object", "global", "storage"
        self.items: list[Any] = items if items is not None else []
        self.tuple_depth = tuple_depth
        self.state = 0  # walk state: 0 new, 1 being walked, 2 done
        self.size = 0
        self.depth = 0


class _Refused(Exception):
    def __init__(self, why: str, unsafe: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.unsafe = unsafe


def _tuple(items: list[Any]) -> _Node:
    depth = 0
    for item in items:
        if type(item) is _Node and item.tuple_depth > depth:
            depth = item.tuple_depth
    if depth + 1 > MAX_DEPTH:
        # Hashing or comparing a tuple recurses in C, one level per nesting: past a few
        # hundred thousand levels that overflows the stack and the process dies.
        raise _Refused(f"it nests tuples more than {MAX_DEPTH} deep")
    return _Node("tuple", items, depth + 1)


def _storage_claim(pid: Any) -> tuple[str, int] | None:
    """(key, bytes) a persistent id ``('storage', StorageClass, key, location, numel[, view])`` claims."""
    if type(pid) is not _Node or pid.kind != "tuple" or len(pid.items) < 5:
        return None
    tag, cls, key, _location, numel = pid.items[:5]
    if tag not in ("storage", b"storage") or type(numel) is not int:
        return None
    itemsize = 1
    if type(cls) is _Node and cls.kind == "global":
        itemsize = _STORAGE_ITEMSIZE.get(str(cls.items[0]).rpartition(".")[2], 1)
    return str(key), max(numel, 0) * itemsize


def _scan(data: bytes | mmap.mmap, pos: int, claims: dict[str, int]) -> tuple[int, Any]:
    """Walk one pickle starting at ``pos``; return (position after STOP, the stand-in it returns)."""
    end = min(len(data), pos + MAX_PICKLE_BYTES)
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    push = stack.append
    ops = 0
    i = pos
    try:
        while True:
            if i >= end:
                if end < len(data):
                    raise _Refused(f"its pickle is longer than {MAX_PICKLE_BYTES:,} bytes (real ones: KBs)")
                raise _Refused("its pickle ends before its STOP instruction", unsafe=False)
            op = data[i]
            i += 1
            ops += 1
            if ops > MAX_OPS:
                raise _Refused(f"its pickle has more than {MAX_OPS:,} instructions")
            if op == 0x71:  # BINPUT
                memo[data[i]] = stack[-1]
                i += 1
            elif op == 0x72:  # LONG_BINPUT
                memo[_UNPACK_U(data, i)[0]] = stack[-1]
                i += 4
            elif op == 0x68:  # BINGET
                push(memo[data[i]])
                i += 1
            elif op == 0x6A:  # LONG_BINGET
                push(memo[_UNPACK_U(data, i)[0]])
                i += 4
            elif op == 0x58:  # BINUNICODE
                n = _UNPACK_U(data, i)[0]
                i += 4
                if i + n > end:
                    raise _Refused("a text in its pickle runs past the end of the file", unsafe=False)
                push(bytes(data[i : i + n]).decode("utf-8", "surrogatepass"))
                i += n
            elif op == 0x4B:  # BININT1
                push(data[i])
                i += 1
            elif op == 0x4D:  # BININT2
                push(_UNPACK_H(data, i)[0])
                i += 2
            elif op == 0x4A:  # BININT
                push(_UNPACK_I(data, i)[0])
                i += 4
            elif op == 0x8A:  # LONG1
                n = data[i]
                push(int.from_bytes(bytes(data[i + 1 : i + 1 + n]), "little", signed=True))
                i += 1 + n
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
                push = stack.append
            elif op == 0x74:  # TUPLE
                items = stack
                stack = metastack.pop()
                push = stack.append
                push(_tuple(items))
            elif op == 0x85:  # TUPLE1
                stack[-1] = _tuple([stack[-1]])
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [_tuple(stack[-2:])]
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [_tuple(stack[-3:])]
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                stack[-1] = _Node("object", [stack[-1], args])
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                stack[-1] = _Node("object", [stack[-1], args])
            elif op == 0x62:  # BUILD
                state = stack.pop()
                _target(stack).items.append(state)
            elif op == 0x61:  # APPEND
                item = stack.pop()
                _target(stack).items.append(item)
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                push = stack.append
                _target(stack).items.extend(items)
            elif op == 0x73:  # SETITEM
                value = stack.pop()
                key = stack.pop()
                _target(stack).items += (key, value)
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                push = stack.append
                _target(stack).items.extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                push(_Node("dict"))
            elif op == 0x5D:  # EMPTY_LIST
                push(_Node("list"))
            elif op == 0x8F:  # EMPTY_SET
                push(_Node("set"))
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x4E:  # NONE
                push(None)
            elif op in (0x88, 0x89):  # NEWTRUE, NEWFALSE
                push(op == 0x88)
            elif op == 0x47:  # BINFLOAT
                push(0.0)
                i += 8
            elif op == 0x55:  # SHORT_BINSTRING
                n = data[i]
                push(bytes(data[i + 1 : i + 1 + n]))
                i += 1 + n
            elif op == 0x63:  # GLOBAL: "module\nname\n"
                first = data.find(b"\n", i, end)
                second = data.find(b"\n", first + 1, end) if first >= 0 else -1
                if second < 0:
                    raise _Refused("a name in its pickle is not terminated", unsafe=False)
                module = bytes(data[i:first]).decode("utf-8", "replace")
                name = bytes(data[first + 1 : second]).decode("utf-8", "replace")
                push(_Node("global", [f"{module}.{name}"]))
                i = second + 1
            elif op == 0x51:  # BINPERSID
                pid = stack.pop()
                claim = _storage_claim(pid)
                if claim is not None:
                    claims.setdefault(claim[0], claim[1])
                push(_Node("storage"))
            elif op == 0x80:  # PROTO
                i += 1
            elif op == 0x2E:  # STOP
                return i, stack.pop()
            else:
                # PyTorch's weights-only unpickler does not know it either and refuses the file.
                raise _Refused(f"its pickle uses an instruction weight files do not use (0x{op:02x})")
    except (IndexError, KeyError, struct.error, AttributeError, TypeError):
        why = "its pickle is damaged (an instruction refers to data that is not there)"
        raise _Refused(why, unsafe=False) from None


def _target(stack: list[Any]) -> _Node:
    target = stack[-1]
    if type(target) is not _Node:
        raise TypeError
    return target


def _walk(root: Any) -> None:
    """Refuse a result that refers to itself, nests too deep or is too large to walk as a tree."""
    if type(root) is not _Node:
        return
    todo: list[tuple[_Node, int]] = [(root, 0)]
    root.state = 1
    while todo:
        node, index = todo[-1]
        items = node.items
        while index < len(items):
            child = items[index]
            index += 1
            if type(child) is not _Node:
                continue
            if child.state == 1:
                raise _Refused("it contains itself (a container inside its own contents)")
            if child.state == 0:
                child.state = 1
                todo[-1] = (node, index)
                todo.append((child, 0))
                if len(todo) > MAX_DEPTH:
                    raise _Refused(f"it nests containers more than {MAX_DEPTH} deep")
                break
        else:
            todo.pop()
            size, depth = 1, 0
            for child in items:
                if type(child) is _Node:
                    size += child.size
                    depth = max(depth, child.depth)
                else:
                    size += 1
            node.size = min(size, MAX_ITEMS + 1)
            node.depth = depth + 1
            node.state = 2
            if node.depth > MAX_DEPTH:
                raise _Refused(f"it nests containers more than {MAX_DEPTH} deep")
            if node.size > MAX_ITEMS:
                raise _Refused(
                    f"walking its contents meets more than {MAX_ITEMS:,} items (parts of it are "
                    "referred to over and over, multiplying its size)"
                )


# The legacy (non-zip) format is five pickles in a row, then the tensors' bytes: this number, the
# format version, a table of the saving machine's type sizes, the weights, the list of storage keys.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001


def _scan_legacy(data: bytes | mmap.mmap, claims: dict[str, int]) -> None:
    pos = 0
    for index in range(5):
        pos, result = _scan(data, pos, claims)
        _walk(result)
        if (index, result) in ((0, _LEGACY_MAGIC), (1, _LEGACY_VERSION)) or index > 1:
            continue
        return  # not a PyTorch file after all: PyTorch stops at the same pickle and refuses it


def _refusal(path: Path, exc: _Refused) -> ModelFileError:
    if exc.unsafe:
        return UnsafeFileError(
            f"'{path.name}' was refused: {exc.why}. Real weight files never do that; the file is damaged "
            "or was made to hang or exhaust the computer."
        )
    return ModelFileError(f"'{path.name}' is truncated or damaged: {exc.why}. Download it again.")


def check_pickle_file(path: str | Path) -> None:
    """Refuse a PyTorch pickle checkpoint whose unpickling or walking would run away.

    Raises ``UnsafeFileError`` naming the limit that was hit, ``ModelFileError`` when the pickle is
    visibly damaged. Reads only the pickle part (not the tensors' data), so it costs milliseconds.
    """
    path = Path(path)
    size = os.stat(path).st_size
    claims: dict[str, int] = {}
    # The stand-ins are many small objects and hold no cycles the scan needs collected: the cyclic
    # collector's passes over them cost more than the scan itself.
    collecting = gc.isenabled()
    gc.disable()
    try:
        if zipfile.is_zipfile(path):
            _check_zip(path, size, claims)
        elif size:
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _scan_legacy(data, claims)
    except _Refused as exc:
        raise _refusal(path, exc) from None
    finally:
        if collecting:
            gc.enable()
    claimed = sum(claims.values())
    if claimed > size:
        raise UnsafeFileError(
            f"'{path.name}' was refused: its tensors claim {claimed:,} bytes but the file has only "
            f"{size:,}. The file is damaged or was made to exhaust memory."
        )


MAX_ZIP_ENTRIES = 1_000_000
"""Records in a zip checkpoint (one per tensor, plus five); the archive's directory is read whole."""


def _zip_entries(path: Path) -> int | None:
    """The number of records the archive's end record announces, read without parsing the directory."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    with path.open("rb") as f:
        found = end_record(f)
    return int(found[zipfile._ECD_ENTRIES_TOTAL]) if found else None


def _check_zip(path: Path, size: int, claims: dict[str, int]) -> None:
    entries = _zip_entries(path)
    if entries is not None and entries > MAX_ZIP_ENTRIES:
        raise _Refused(f"its archive announces {entries:,} records (the limit is {MAX_ZIP_ENTRIES:,})")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if not infos:
                return
            unpacked = sum(info.file_size for info in infos)
            # PyTorch stores its records uncompressed; a compressed one could unpack to any size.
            if unpacked > 2 * size + (16 << 20):
                raise _Refused(
                    f"its archive unpacks to {unpacked:,} bytes from {size:,} (weight files are not "
                    "compressed)"
                )
            prefix = infos[0].filename.split("/", 1)[0]
            info = next((i for i in infos if i.filename == f"{prefix}/data.pkl"), None)
            if info is None:
                return  # PyTorch refuses it as not a checkpoint
            if info.file_size > MAX_PICKLE_BYTES:
                raise _Refused(
                    f"its pickle is {info.file_size:,} bytes (the limit is {MAX_PICKLE_BYTES:,}; real "
                    "checkpoints use a few hundred KB)"
                )
            data = archive.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise _Refused(f"its archive cannot be read ({exc})", unsafe=False) from None
    _walk(_scan(data, 0, claims)[1])
