"""Argument encoders: one canonical byte string per argument value.

Contract: ``encode(value)`` returns the same bytes for equal values of the
same types, in every process and on every machine, and different bytes for
values that differ in type or content. The bytes are never hashed through
pickle. The format is written down, with test vectors, in ``docs/task-ids.md``;
in short every value is a one-byte tag followed by its payload, and every
variable-length payload is preceded by its length (8 bytes, big-endian)::

    None  N              bool   T | F            int  i len two's-complement
    float f 8-byte IEEE  str    s len utf-8      bytes b len raw
    list  l n items      tuple  t n items        dict d n (key value)* sorted by key bytes
    set   e n items sorted by their bytes        sha256:// URI  u <64 hex>
    numpy array  a dtype ndim dims order xxh3-128   numpy scalar  n dtype len raw
    (arrays and scalars without padding bytes: see _meaningful_bytes)
    dataclass c name n (field value)*            kachery.File  p <64 hex sha256>
    task future  r <64 hex task id>              registered type  x name encoded-surrogate
    zarr array stored in the content store  z <64 hex of its index> path

Dispatch is by exact type through a dict (the fast path of a cache hit), then
by the classes of the value's MRO. A type with no encoder is refused with an
:class:`~kachery_tasks.errors.UnsupportedArgumentError`; new types are added
with :func:`register_encoder`. numpy and xxhash are imported only when an
array or a numpy scalar is first encoded, zarr only when a zarr array is.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from ..errors import InvalidValueError, UnsupportedArgumentError

_U64 = struct.Struct(">Q").pack
_F64 = struct.Struct(">d").pack
_NAN = b"f\x7f\xf8\x00\x00\x00\x00\x00\x00"

ACCEPTED = (
    "None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, numpy arrays "
    "and scalars, zarr arrays from kachery.load_zarr, sha256:// URIs, kachery.File(path), "
    "task futures, dataclasses, and types registered with kachery.register_encoder"
)

Out = list  # a list of bytes pieces; the encoding is their concatenation
Encoder = Callable[[Any, Out], None]


class _Refused(Exception):
    """Internal: a value (possibly nested) has no encoder."""

    def __init__(self, value: Any, hint: str = "") -> None:
        super().__init__(value)
        self.value = value
        self.hint = hint


# ------------------------------------------------------------------ scalars
def _enc_none(v: None, out: Out) -> None:
    out.append(b"N")


def _enc_bool(v: bool, out: Out) -> None:
    out.append(b"T" if v else b"F")


def _enc_int(v: int, out: Out) -> None:
    raw = int.to_bytes(v, (v.bit_length() + 8) // 8, "big", signed=True)
    out.append(b"i" + _U64(len(raw)) + raw)


def _enc_float(v: float, out: Out) -> None:
    out.append(_NAN if v != v else b"f" + _F64(v))


def _enc_str(v: str, out: Out) -> None:
    if v.startswith("sha256://") and _enc_uri(v, out):
        return
    raw = v.encode("utf-8", "surrogatepass")
    out.append(b"s" + _U64(len(raw)) + raw)


def _enc_uri(v: str, out: Out) -> bool:
    from ..uris import is_content_uri, parse_uri

    if not is_content_uri(v):
        return False
    out.append(b"u" + parse_uri(v).hex.encode("ascii"))
    return True


def _enc_bytes(v: bytes | bytearray | memoryview, out: Out) -> None:
    raw = bytes(v) if not isinstance(v, bytes) else v
    out.append(b"b" + _U64(len(raw)) + raw)


# -------------------------------------------------------------- containers
def _enc_list(v: list, out: Out) -> None:
    out.append(b"l" + _U64(len(v)))
    for item in v:
        _encode_into(item, out)


def _enc_tuple(v: tuple, out: Out) -> None:
    out.append(b"t" + _U64(len(v)))
    for item in v:
        _encode_into(item, out)


def _enc_dict(v: dict, out: Out) -> None:
    pairs = sorted((encode(k), encode(x)) for k, x in v.items())
    out.append(b"d" + _U64(len(pairs)))
    for k, x in pairs:
        out.append(k)
        out.append(x)


def _enc_set(v: set | frozenset, out: Out) -> None:
    items = sorted(encode(x) for x in v)
    out.append(b"e" + _U64(len(items)))
    out.extend(items)


# ------------------------------------------------------------------- numpy
def _enc_ndarray(v: Any, out: Out) -> None:
    import numpy as np
    import xxhash

    if v.dtype.hasobject:
        raise _Refused(v, "arrays of Python objects have no stable bytes; convert them first")
    if v.flags.c_contiguous:
        order, buf = b"C", v
    elif v.flags.f_contiguous:
        order, buf = b"F", v.T  # the transpose of an F-ordered array is C-ordered: no copy
    else:
        order, buf = b"C", np.ascontiguousarray(v)
    flat = buf.reshape(-1).view(np.uint8) if buf.size else b""
    ranges = _meaningful_bytes(v.dtype)
    if ranges is not None and buf.size:  # padding: hash only the bytes that hold values
        rows = flat.reshape(buf.size, v.dtype.itemsize)
        flat = np.concatenate([rows[:, a:b] for a, b in ranges], axis=1).reshape(-1)
    digest = xxhash.xxh3_128_digest(flat)
    dims = b"".join(_U64(d) for d in v.shape)
    out.append(b"a")
    _enc_str(_dtype_name(v.dtype), out)
    out.append(_U64(v.ndim) + dims + order + digest)


def _dtype_name(dtype: Any) -> str:
    return dtype.str if dtype.fields is None else str(dtype.descr)


_ranges_memo: dict[Any, list[tuple[int, int]] | None] = {}


def _meaningful_bytes(dtype: Any) -> list[tuple[int, int]] | None:
    """The byte ranges of an item that hold its value, or None when every byte does.

    Padding between the fields of an aligned structured dtype, and the 6 (or
    2) bytes after the 80-bit x87 value of a ``longdouble``, are never written
    on purpose: they hold whatever was in memory, which differs between
    processes. Encodings leave them out.
    """
    got = _ranges_memo.get(dtype, False)
    if got is not False:
        return got
    merged: list[tuple[int, int]] = []
    for a, b in sorted(_byte_ranges(dtype, 0)):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    result = None if merged == [(0, dtype.itemsize)] else merged
    with _lock:
        _ranges_memo[dtype] = result
    return result


def _byte_ranges(dtype: Any, base: int) -> list[tuple[int, int]]:
    if dtype.fields is not None:
        out: list[tuple[int, int]] = []
        for name in dtype.names:
            field_dtype, offset = dtype.fields[name][:2]
            out.extend(_byte_ranges(field_dtype, base + offset))
        return out
    if dtype.subdtype is not None:
        sub, shape = dtype.subdtype
        inner = _byte_ranges(sub, 0)
        count = 1
        for d in shape:
            count *= d
        if inner == [(0, sub.itemsize)]:
            return [(base, base + count * sub.itemsize)]
        return [(base + i * sub.itemsize + a, base + i * sub.itemsize + b)
                for i in range(count) for a, b in inner]
    if dtype.kind in "fc" and dtype.itemsize in (12, 16, 24, 32):
        import numpy as np

        if np.finfo(dtype).nmant == 63:  # x87 extended precision: 10 bytes of value
            size = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
            starts = range(base, base + dtype.itemsize, size)
            return [(s + size - 10, s + size) if big else (s, s + 10) for s in starts]
    return [(base, base + dtype.itemsize)]


def _enc_npscalar(v: Any, out: Out) -> None:
    import numpy as np

    dtype = v.dtype
    if dtype.hasobject:
        raise _Refused(v)
    if dtype.kind in "fc" and np.isnan(v):
        v = np.array(np.nan, dtype=dtype)[()]
    raw = v.tobytes()
    ranges = _meaningful_bytes(dtype)
    if ranges is not None:
        raw = b"".join(raw[a:b] for a, b in ranges)
    out.append(b"n")
    _enc_str(_dtype_name(dtype), out)
    out.append(_U64(len(raw)) + raw)


_numpy_ready = False


def _register_numpy() -> None:
    """Add numpy's array and scalar types to the dispatch table (on first use)."""
    global _numpy_ready
    import numpy as np

    with _lock:
        _DISPATCH[np.ndarray] = _enc_ndarray
        for t in _numpy_scalar_types(np):
            _DISPATCH[t] = _enc_npscalar
        _INHERITABLE.add(np.ndarray)
        _DISPATCH[np.ma.MaskedArray] = _refuse_masked
        _numpy_ready = True


def _refuse_masked(v: Any, out: Out) -> None:
    raise _Refused(v, "masked arrays are not encoded; pass .data and .mask as two arguments")


def _numpy_scalar_types(np: Any) -> list[type]:
    found: list[type] = []
    stack = [np.generic]
    while stack:
        t = stack.pop()
        found.append(t)
        stack.extend(t.__subclasses__())
    return found


# -------------------------------------------------------------------- zarr
_ZARR_HINT = (
    "a zarr array is part of a task id only when it lives in the content store, where its "
    "URI names its content: pass kachery.load_zarr(kachery.store_zarr(array)) (chunks that "
    "are already stored are not stored again)"
)


def _enc_zarr_array(v: Any, out: Out) -> None:
    """A stored zarr array is its index URI (and path): its chunks are never read."""
    from ..storage.zarr_store import ContentStore
    from ..uris import parse_uri

    store = v.store
    if not (isinstance(store, ContentStore) and store.uri is not None and store.read_only):
        raise _Refused(v, _ZARR_HINT)
    out.append(b"z" + parse_uri(store.uri).hex.encode("ascii"))
    _enc_str(v.path, out)


def _register_zarr() -> None:
    """Route zarr arrays to their encoder (on first use: zarr is imported only then)."""
    global _zarr_ready
    import zarr

    with _lock:
        _DISPATCH[zarr.Array] = _enc_zarr_array
        _INHERITABLE.add(zarr.Array)
        _zarr_ready = True


_zarr_ready = False


# ------------------------------------------------------------- other kinds
def _enc_dataclass(v: Any, out: Out) -> None:
    cls = type(v)
    fields = dataclasses.fields(v)
    out.append(b"c")
    _enc_str(f"{cls.__module__}.{cls.__qualname__}", out)
    out.append(_U64(len(fields)))
    for f in fields:
        _enc_str(f.name, out)
        _encode_into(getattr(v, f.name), out)


# User-registered types: type -> (name, function returning an encodable surrogate).
_REGISTERED: dict[type, tuple[str, Callable[[Any], Any]]] = {}


def _enc_registered(v: Any, out: Out) -> None:
    for cls in type(v).__mro__:
        entry = _REGISTERED.get(cls)
        if entry is not None:
            name, fn = entry
            out.append(b"x")
            _enc_str(name, out)
            _encode_into(fn(v), out)
            return
    raise _Refused(v)  # pragma: no cover - dispatch only routes registered types here


def register_encoder(cls: type, fn: Callable[[Any], Any], name: str | None = None) -> None:
    """Teach task ids a new argument type.

    ``fn(value)`` returns a surrogate made of encodable values (for example a
    tuple of the fields that define the value); the argument is encoded as the
    tag ``x``, ``name`` (default ``module.qualname`` of ``cls``) and the
    surrogate's encoding. Instances of subclasses use the encoder of their
    nearest registered base. Registering a type again replaces its encoder
    (and so changes the ids of tasks that take it).

    Example::

        kachery.register_encoder(Interval, lambda iv: (iv.start, iv.stop))
    """
    if not isinstance(cls, type):
        raise InvalidValueError(f"register_encoder needs a class, not {cls!r}")
    if not callable(fn):
        raise InvalidValueError(f"register_encoder needs a function for {cls.__qualname__}")
    with _lock:
        _REGISTERED[cls] = (name or f"{cls.__module__}.{cls.__qualname__}", fn)
        _DISPATCH[cls] = _enc_registered
        # Subclasses looked up earlier may have cached another encoder: forget them.
        for t in [t for t, e in _DISPATCH.items() if e is _enc_registered and t not in _REGISTERED]:
            del _DISPATCH[t]


_lock = threading.RLock()
_DISPATCH: dict[type, Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
    list: _enc_list,
    tuple: _enc_tuple,
    dict: _enc_dict,
    set: _enc_set,
    frozenset: _enc_set,
}
# Base classes whose encoder also serves their subclasses (e.g. IntEnum, NamedTuple, memmap).
_INHERITABLE: set[type] = {bool, int, float, str, bytes, bytearray, list, tuple, dict, set,
                           frozenset}


def register_special(cls: type, encoder: Encoder) -> None:
    """Internal: route ``cls`` (File, task futures) to ``encoder``."""
    with _lock:
        _DISPATCH[cls] = encoder


def _encode_into(v: Any, out: Out) -> None:
    enc = _DISPATCH.get(type(v))
    if enc is None:
        enc = _resolve(v)
    enc(v, out)


def _resolve(v: Any) -> Encoder:
    """Find (and remember) the encoder for a type with no exact entry."""
    t = type(v)
    if not _numpy_ready and t.__module__.split(".")[0] == "numpy":
        _register_numpy()
        enc = _DISPATCH.get(t)
        if enc is not None:
            return enc
    if not _zarr_ready and t.__module__.split(".")[0] == "zarr":
        _register_zarr()
        enc = _DISPATCH.get(t)
        if enc is not None:
            return enc
    if any(cls in _REGISTERED for cls in t.__mro__):
        enc = _enc_registered
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        enc = _enc_dataclass
    else:
        for base in t.__mro__[1:]:
            enc = _DISPATCH.get(base)
            if enc is not None and base in _INHERITABLE:
                break
        else:
            raise _Refused(v, _hint(v))
    with _lock:
        _DISPATCH[t] = enc
    return enc


def _hint(v: Any) -> str:
    if isinstance(v, PurePath | os.DirEntry):
        return (
            "a path names a file but says nothing of its content; pass kachery.File(path) "
            "so the task id follows the file's content"
        )
    if hasattr(v, "__next__") or type(v).__name__ in ("generator", "coroutine"):
        return "iterators and generators are consumed when read; pass a list or tuple instead"
    if callable(v):
        return "functions have no stable encoding; pass the data they work on, or make it a task"
    return ""


def encode(value: Any) -> bytes:
    """The canonical bytes of one value (raises :class:`_Refused` for unknown types)."""
    out: Out = []
    _encode_into(value, out)
    return b"".join(out)


def encode_argument(name: str, value: Any, out: Out, where: str = "") -> None:
    """Append the encoding of argument ``name`` to ``out``; refuse unknown types clearly."""
    try:
        _encode_into(value, out)
    except _Refused as e:
        raise unsupported(name, value, e, where) from None
    except RecursionError:
        raise too_deep(name, value, where) from None


def too_deep(name: str, value: Any, where: str = "") -> UnsupportedArgumentError:
    """The error for an argument that contains itself or is nested past the recursion limit.

    Encoding recurses through containers; rather than tracking every container
    on the hot path, the encoder lets Python's recursion limit stop it and
    this looks for a cycle afterwards to say which it was.
    """
    if _contains_itself(value):
        why = ("contains itself (a container that holds itself, directly or through others), "
               "so it has no finite encoding; pass a value without cycles")
    else:
        why = (f"is nested more deeply than Python's recursion limit "
               f"({sys.getrecursionlimit()}) allows to encode; pass a flatter value")
    return UnsupportedArgumentError(
        f"argument {name!r}{where} of type {type(value).__qualname__} {why}"
    )


def _contains_itself(value: Any) -> bool:
    """True when a list, tuple, dict or set holds itself (an iterative search: no recursion)."""
    on_path: set[int] = set()
    done: set[int] = set()  # explored without a cycle (shared parts are searched once)
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        v, leaving = stack.pop()
        if leaving:
            on_path.discard(id(v))
            done.add(id(v))
            continue
        if not isinstance(v, list | tuple | dict | set | frozenset) or id(v) in done:
            continue
        if id(v) in on_path:
            return True
        on_path.add(id(v))
        stack.append((v, True))
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else list(v)
        stack.extend((x, False) for x in items)
    return False


def unsupported(name: str, value: Any, e: _Refused, where: str = "") -> UnsupportedArgumentError:
    """The error for an argument that contains a value without an encoder."""
    bad = e.value
    t = type(bad)
    inner = "" if bad is value else f" contains a value of type {t.__module__}.{t.__qualname__}"
    what = f"{t.__module__}.{t.__qualname__}" if bad is value else type(value).__qualname__
    msg = (
        f"argument {name!r}{where} of type {what}{inner} cannot be part of a task id. "
        f"Accepted: {ACCEPTED}."
    )
    if e.hint:
        msg += f" Hint: {e.hint}."
    else:
        msg += (
            f" To accept {t.__qualname__}, register an encoder: "
            f"kachery.register_encoder({t.__qualname__}, lambda v: <tuple of accepted values>)."
        )
    return UnsupportedArgumentError(msg)


