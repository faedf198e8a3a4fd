"""Task arguments on the wire: values another node can rebuild without running code.

A call sent to another node (see :mod:`.call`) carries its arguments in this
form. The receiver rebuilds each value, re-encodes it with the task-id
encoders and checks that the id it gets is the id it was sent, so what runs
there is exactly the call asked for. Nothing is unpickled and no code
travels: a value is rebuilt only from data, and a class (a dataclass) only
if the receiver has already imported its module.

The form is JSON. Strings, booleans, null, finite floats and integers of at
most 53 bits are themselves; a JSON array is a Python list; every other value
is a one-key object whose key names its type::

    {"$int": "<decimal>"}            an integer beyond 53 bits
    {"$float": "nan" | "inf" | "-inf"}
    {"$dict": [[key, value], ...]}   any dict (keys are values too)
    {"$tuple": [...]}  {"$set": [...]}  {"$frozenset": [...]}
    {"$bytes": "<base64>"}           bytes (bytearray and memoryview arrive as bytes)
    {"$npy": "<base64 of .npy>"}     a numpy array (no object arrays)
    {"$npscalar": ["<dtype>", "<base64 of its bytes>"]}
    {"$content": ["bytes" | "npy", "sha256://..."]}  a large bytes value or array,
                                     sent as content (see below)
    {"$file": "sha256://..."}        kachery.File: the receiver fetches the content
    {"$zarr": ["sha256://<index>", "<path>"]}  a stored, read-only zarr array
    {"$dataclass": ["module:qualname", {field: value, ...}]}
    {"$result": "sha256:<task id>"}  the result of another task (a TaskFuture)

Values larger than ``inline_max`` encoded bytes (bytes and arrays) are not
put in the message: the sender stores them as content and lists their URIs
in :attr:`Encoded.content`, so the transport can make them available (a
bucket upload); the receiver loads them by URI, verified against their id.
What else the receiver fetches by URI -- a ``kachery.File``, a zarr array, a
content URI given as text -- is listed in :attr:`Encoded.named`, and the
results of other tasks in :attr:`Encoded.results`, wherever they are nested.
Types registered with ``kachery.register_encoder`` have no decoder and are
refused, as is anything else the task-id encoders accept only by reference
to this process.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidValueError, UnsupportedArgumentError
from ..uris import is_content_uri

#: Bytes values and arrays at most this large (encoded) travel inside the message.
INLINE_MAX = 64 * 1024
_MAX_DEPTH = 100
_SAFE_INT = 2**53


@dataclass
class Encoded:
    """Arguments in wire form, and what the receiver will need to fetch."""

    value: Any
    content: list[str] = field(default_factory=list)
    """Large values the sender stored as content (``store``)."""
    named: dict[str, Any] = field(default_factory=dict)
    """Content the arguments name: ``{uri: path}`` for a ``kachery.File`` (the file it
    was made from here, which may not be in the store), ``{uri: None}`` for a zarr array
    and a content URI given as text."""
    results: list[str] = field(default_factory=list)
    """Task ids of other tasks' results (``$result``)."""


class WireError(InvalidValueError):
    """A value cannot be sent to another node, or a received one cannot be rebuilt."""


StoreBytes = Callable[[bytes, str], str]
"""``(data, label) -> sha256 URI``: stores a large value as content (the sender's node store)."""

LoadPath = Callable[[str], str]
"""``uri -> local path``: fetches (and verifies) content on the receiver."""


# ------------------------------------------------------------------ encoding
def encode(value: Any, store: StoreBytes | None = None, inline_max: int = INLINE_MAX,
           what: str = "argument") -> Encoded:
    """The wire form of ``value``; large bytes and arrays go to ``store`` (if given).

    Raises WireError naming ``what`` for a value that cannot travel.
    """
    out = Encoded(None)
    out.value = _Encoder(store, inline_max, out, what).enc(value, 0)
    return out


class _Encoder:
    def __init__(self, store: StoreBytes | None, inline_max: int, out: Encoded,
                 what: str) -> None:
        self.store = store
        self.inline_max = inline_max
        self.out = out
        self.content = out.content
        self.what = what

    def refuse(self, v: Any, why: str) -> WireError:
        return WireError(
            f"{self.what} of type {type(v).__module__}.{type(v).__qualname__} cannot be sent to "
            f"another node: {why}"
        )

    def enc(self, v: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.refuse(v, f"it is nested more than {_MAX_DEPTH} levels deep")
        t = type(v)
        if t is str:
            if v.startswith("sha256://") and is_content_uri(v):
                self.out.named.setdefault(v, None)
            return v
        if v is None or t is bool:
            return v
        if t is int:
            return v if -_SAFE_INT < v < _SAFE_INT else {"$int": str(v)}
        if t is float:
            if math.isfinite(v):
                return v
            return {"$float": "nan" if v != v else ("inf" if v > 0 else "-inf")}
        if t is list:
            return [self.enc(x, depth + 1) for x in v]
        if t is tuple:
            return {"$tuple": [self.enc(x, depth + 1) for x in v]}
        if t is dict:
            return {"$dict": [[self.enc(k, depth + 1), self.enc(x, depth + 1)]
                              for k, x in v.items()]}
        if t is set or t is frozenset:
            return {"$set" if t is set else "$frozenset": [self.enc(x, depth + 1) for x in v]}
        if t in (bytes, bytearray, memoryview):
            return self.large_or_inline(bytes(v), "bytes", "$bytes")
        return self.special(v, t, depth)

    def special(self, v: Any, t: type, depth: int) -> Any:
        mod = t.__module__
        if mod == "numpy" or mod.startswith("numpy."):
            return self.numpy(v)
        if getattr(t, "_kachery_future", False):
            self.out.results.append(v.task_id)
            return {"$result": v.task_id}
        from .file_args import File

        if isinstance(v, File):
            self.out.named[v.uri] = v.path
            return {"$file": v.uri}
        if mod.startswith("zarr"):
            return self.zarr(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            name = f"{t.__module__}:{t.__qualname__}"
            if "<locals>" in t.__qualname__:
                raise self.refuse(v, "a class defined inside a function cannot be found by name")
            fields = {f.name: self.enc(getattr(v, f.name), depth + 1)
                      for f in dataclasses.fields(v)}
            return {"$dataclass": [name, fields]}
        raise self.refuse(v, "the wire carries JSON values, containers, bytes, numpy arrays, "
                             "kachery.File, stored zarr arrays, dataclasses and task results")

    def numpy(self, v: Any) -> Any:
        import numpy as np

        if isinstance(v, np.ma.MaskedArray):
            raise self.refuse(v, "masked arrays are not sent; pass .data and .mask")
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise self.refuse(v, "arrays of Python objects have no stable bytes")
            buf = io.BytesIO()
            np.save(buf, v, allow_pickle=False)
            return self.large_or_inline(buf.getvalue(), "npy", "$npy")
        if isinstance(v, np.generic) and not v.dtype.hasobject:
            return {"$npscalar": [v.dtype.str, _b64(v.tobytes())]}
        raise self.refuse(v, "only numpy arrays and scalars are sent")

    def zarr(self, v: Any) -> Any:
        from ..storage.zarr_store import ContentStore

        store = getattr(v, "store", None)
        if isinstance(store, ContentStore) and store.uri is not None and store.read_only:
            self.out.named.setdefault(store.uri, None)
            return {"$zarr": [store.uri, v.path]}
        raise self.refuse(v, "only zarr arrays from kachery.load_zarr travel (by their URI)")

    def large_or_inline(self, data: bytes, kind: str, tag: str) -> Any:
        if len(data) <= self.inline_max or self.store is None:
            return {tag: _b64(data)}
        uri = self.store(data, f"argument.{kind}")
        self.content.append(uri)
        return {"$content": [kind, uri]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------ decoding
def decode(obj: Any, load_path: LoadPath | None = None, results: Callable[[str], Any] | None = None,
           what: str = "argument") -> Any:
    """Rebuild a value from its wire form.

    ``load_path`` fetches content by URI (large values, files, zarr indexes);
    ``results`` turns a task id into a stand-in for that task's result
    (see :class:`~kachery_tasks.runtime.call.ResultRef`). Raises WireError for
    anything malformed, naming ``what``.
    """
    return _Decoder(load_path, results, what).dec(obj, 0)


class _Decoder:
    def __init__(self, load_path: LoadPath | None, results: Callable[[str], Any] | None,
                 what: str) -> None:
        self.load_path = load_path
        self.results = results
        self.what = what

    def bad(self, why: str) -> WireError:
        return WireError(f"received {self.what} is malformed: {why}")

    def dec(self, o: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.bad(f"nested more than {_MAX_DEPTH} levels deep")
        t = type(o)
        if o is None or t in (bool, str, int, float):
            return o
        if t is list:
            return [self.dec(x, depth + 1) for x in o]
        if t is not dict or len(o) != 1:
            raise self.bad(f"unexpected {t.__name__} {str(o)[:60]!r}")
        ((tag, p),) = o.items()
        handler = self.HANDLERS.get(tag)
        if handler is None:
            raise self.bad(f"unknown tag {tag!r}")
        try:
            return handler(self, p, depth)
        except WireError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise self.bad(f"{tag}: {e}") from None

    def items(self, p: Any, depth: int) -> list:
        if type(p) is not list:
            raise self.bad("expected a list")
        return [self.dec(x, depth + 1) for x in p]

    def int_(self, p: Any, depth: int) -> int:
        if type(p) is not str or len(p) > 5000:
            raise self.bad("$int is a decimal string of at most 5000 digits")
        return int(p)

    def float_(self, p: Any, depth: int) -> float:
        if p not in ("nan", "inf", "-inf"):
            raise self.bad(f"$float {p!r}")
        return float(p)

    def dict_(self, p: Any, depth: int) -> dict:
        out = {}
        for pair in self.items(p, depth - 1):  # pairs are lists of two decoded values
            if len(pair) != 2:
                raise self.bad("$dict holds [key, value] pairs")
            out[_hashable(pair[0], self)] = pair[1]
        return out

    def set_(self, p: Any, depth: int) -> set:
        return {_hashable(x, self) for x in self.items(p, depth)}

    def frozenset_(self, p: Any, depth: int) -> frozenset:
        return frozenset(self.set_(p, depth))

    def bytes_(self, p: Any, depth: int) -> bytes:
        return base64.b64decode(p, validate=True)

    def npy(self, p: Any, depth: int) -> Any:
        return _load_npy(io.BytesIO(base64.b64decode(p, validate=True)))

    def npscalar(self, p: Any, depth: int) -> Any:
        import numpy as np

        dtype, raw = p
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise self.bad("object scalars are not received")
        return np.frombuffer(base64.b64decode(raw, validate=True), dtype=dt)[0]

    def content(self, p: Any, depth: int) -> Any:
        kind, uri = p
        path = self.fetch(uri)
        if kind == "bytes":
            with open(path, "rb") as f:
                return f.read()
        if kind == "npy":
            with open(path, "rb") as f:
                return _load_npy(f)
        raise self.bad(f"unknown content kind {kind!r}")

    def file(self, p: Any, depth: int) -> Any:
        from .file_args import File

        return File(self.fetch(p))

    def zarr(self, p: Any, depth: int) -> Any:
        import zarr

        from ..nodes import current_node
        from ..storage.zarr_store import ContentStore

        uri, path = p
        self.fetch(uri)
        if type(path) is not str:
            raise self.bad("a zarr path is a string")
        # chunks are read lazily, through the current node's store and remotes
        store = ContentStore.from_uri(uri, current_node())
        return zarr.open_array(store, mode="r", path=path, zarr_format=3)

    def dataclass_(self, p: Any, depth: int) -> Any:
        name, fields = p
        module, _, qualname = name.partition(":")
        mod = sys.modules.get(module)
        if mod is None:
            raise WireError(
                f"received {self.what} is a {name} dataclass, but module {module} is not "
                "imported on this node; only classes of imported modules are rebuilt"
            )
        cls: Any = mod
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise self.bad(f"{name} is not a dataclass on this node")
        if type(fields) is not dict:
            raise self.bad("dataclass fields are an object")
        values = {k: self.dec(v, depth + 1) for k, v in fields.items()}
        try:
            return _build_dataclass(cls, values)
        except TypeError as e:
            raise self.bad(f"{name}: {e}") from None

    def result(self, p: Any, depth: int) -> Any:
        if self.results is None:
            raise WireError(f"received {self.what} refers to a task result; none can be loaded")
        return self.results(p)

    def fetch(self, uri: Any) -> str:
        from ..uris import is_content_uri

        if type(uri) is not str or not is_content_uri(uri):
            raise self.bad(f"{str(uri)[:80]!r} is not a sha256:// URI")
        if self.load_path is None:
            raise WireError(f"received {self.what} needs content {uri}, which cannot be fetched")
        return self.load_path(uri)

    HANDLERS: ClassVar[dict[str, Callable[[_Decoder, Any, int], Any]]] = {
        "$int": int_, "$float": float_, "$dict": dict_, "$tuple": lambda s, p, d: tuple(
            s.items(p, d)), "$set": set_, "$frozenset": frozenset_, "$bytes": bytes_,
        "$npy": npy, "$npscalar": npscalar, "$content": content, "$file": file,
        "$zarr": zarr, "$dataclass": dataclass_, "$result": result,
    }


def _hashable(v: Any, d: _Decoder) -> Any:
    try:
        hash(v)
    except TypeError:
        raise d.bad(f"an unhashable {type(v).__name__} as a dict key or set member") from None
    return v


def _load_npy(f: Any) -> Any:
    import numpy as np

    return np.load(f, allow_pickle=False)


def _build_dataclass(cls: type, values: dict[str, Any]) -> Any:
    """An instance with exactly these field values (also for frozen and init=False fields)."""
    obj = object.__new__(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if set(values) != names:
        raise TypeError(f"fields {sorted(values)} do not match {sorted(names)}")
    for k, v in values.items():
        object.__setattr__(obj, k, v)
    return obj


__all__ = ["INLINE_MAX", "Encoded", "UnsupportedArgumentError", "WireError", "decode", "encode"]
