"""Result codecs: how a task's return value becomes a blob in the content store.

Codecs are tried in registry order and the first that accepts the value wins:

* ``json``   plain data: None, bool, int, finite float, str, and lists and
  dicts (with str keys) of those, nothing else. Round-trips exactly.
* ``zarr``   zarr arrays, and numpy arrays of at least 256 MiB
  (``KACHERY_TASKS_ZARR_THRESHOLD``): chunked content-addressed zarr, returned
  as a lazy read-only ``zarr.Array``.
* ``npy``    numpy arrays of any non-object dtype, in the ``.npy`` format.
* ``pickle`` anything else that cloudpickle can serialise. Loading runs code,
  so a pickle produced by *another node* is loaded only where the user has
  allowed that node (:func:`allow_pickles_from`, or the environment variable
  ``KACHERY_TASKS_ALLOW_PICKLES_FROM`` holding node ids separated by commas,
  or ``*``); otherwise :class:`~kachery_tasks.errors.UntrustedPickleError`.

A new codec is a :class:`ResultCodec` subclass
passed to :func:`register_codec` with ``before="npy"`` or ``before="pickle"``;
records name the codec, so decoding always finds the right one.

Values handed back to callers are **read-only**: arrays come back with
``writeable=False`` (the same array object on every cache hit), JSON lists
and dicts are parsed afresh for each hit, pickles are unpickled afresh.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from ..errors import ContentNotFoundError, ResultEncodingError, UntrustedPickleError

ENV_ALLOW = "KACHERY_TASKS_ALLOW_PICKLES_FROM"
MMAP_THRESHOLD = 64 * 2**20  # arrays at least this large are memory-mapped, not read

# What a cache hit keeps in memory: (loader, payload, nbytes). ``loader`` is None
# when ``payload`` is the value itself (immutable, or a read-only array); else
# the value is ``loader(payload)``, made afresh for every hit.
MemoEntry = tuple[Any, Any, int]


class ResultCodec:
    """One way of turning results into bytes and back. Subclass and register.

    ``accepts`` must be cheap and must not change the value; ``encode``
    returns the bytes to store; ``decode`` reads the blob at ``path`` (a
    read-only file that never changes). ``memo`` says what a cache hit keeps.
    """

    name: str = ""
    extension: str = ""
    inline: bool = False  # may small results be kept in the records database?
    reads_path: bool = False  # decode a stored blob from its path (e.g. memory-mapped)

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes | memoryview:
        raise NotImplementedError

    def decode(self, path: str) -> Any:
        raise NotImplementedError

    def decode_bytes(self, data: bytes) -> Any:
        """Decode from bytes in memory (needed only by codecs with ``inline = True``)."""
        raise NotImplementedError

    def decodes_from_path(self, size: int) -> bool:
        """Whether a stored blob of ``size`` bytes is decoded from its path (e.g.
        memory-mapped) instead of being read into memory whole. Blobs read whole
        are checked against their hash when first loaded in a process; these
        are not (see :meth:`~kachery_tasks.runtime.cache.NodeCache.load`)."""
        return self.reads_path or not self.inline

    def memo(self, value: Any, data: bytes | memoryview | None) -> MemoEntry:
        """What to keep for later hits; default: decode from the stored bytes each time."""
        if data is None:
            data = self.encode(value)
        return (self._loads, bytes(data), len(data))

    def _loads(self, data: bytes) -> Any:
        raise NotImplementedError


_IMMUTABLE = (type(None), bool, int, float, str)
_JSON_INT_BITS = 14_000  # about 4200 decimal digits


class JsonCodec(ResultCodec):
    name, extension, inline = "json", "json", True

    def accepts(self, value: Any) -> bool:
        return _plain(value, 0)

    def encode(self, value: Any) -> bytes:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()

    def decode(self, path: str) -> Any:
        with open(path, "rb") as f:
            return json.loads(f.read())

    def decode_bytes(self, data: bytes) -> Any:
        return json.loads(data)

    def memo(self, value: Any, data: bytes | memoryview | None) -> MemoEntry:
        if type(value) in _IMMUTABLE:
            return (None, value, 64 + (len(value) if type(value) is str else 0))
        if data is None:
            data = self.encode(value)
        return (json.loads, bytes(data), len(data))


def _plain(v: Any, depth: int) -> bool:
    t = type(v)
    if t is float:
        return v - v == 0.0  # finite (NaN and inf fail)
    if t is int:  # Python refuses to write ints of over 4300 digits as text
        return v.bit_length() <= _JSON_INT_BITS
    if t in _IMMUTABLE:
        return True
    if depth > 100:
        return False
    if t is list:
        return all(_plain(x, depth + 1) for x in v)
    if t is dict:
        return all(type(k) is str and _plain(x, depth + 1) for k, x in v.items())
    return False


class NpyCodec(ResultCodec):
    name, extension, inline = "npy", "npy", True
    reads_path = True  # large arrays are memory-mapped, not read

    def accepts(self, value: Any) -> bool:
        if "numpy" not in type(value).__module__ and not hasattr(value, "__array_interface__"):
            return False
        import numpy as np

        return (
            isinstance(value, np.ndarray)
            and not value.dtype.hasobject
            and not isinstance(value, np.ma.MaskedArray)
        )

    def encode(self, value: Any) -> memoryview:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getbuffer()

    def decodes_from_path(self, size: int) -> bool:
        return size >= MMAP_THRESHOLD

    def decode(self, path: str) -> Any:
        import numpy as np

        big = os.path.getsize(path) >= MMAP_THRESHOLD
        arr = np.load(path, mmap_mode="r" if big else None, allow_pickle=False)
        arr.flags.writeable = False
        return arr

    def decode_bytes(self, data: bytes) -> Any:
        """The array, as a read-only view of ``data`` (no copy) for the usual headers."""
        import io

        import numpy as np
        from numpy.lib import format as npy

        f = io.BytesIO(data)
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            read_header = npy.read_array_header_1_0 if version == (1, 0) else \
                npy.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError("an npy result holding Python objects")
            count = 1
            for n in shape:
                count *= n
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
            arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
        arr.flags.writeable = False
        return arr

    def memo(self, value: Any, data: bytes | memoryview | None) -> MemoEntry:
        import numpy as np

        # a read-only view: the task's own array (on a first call) is left as it was
        value = np.asarray(value).view()
        value.flags.writeable = False
        return (None, value, value.nbytes)


ENV_ZARR_THRESHOLD = "KACHERY_TASKS_ZARR_THRESHOLD"
ZARR_THRESHOLD = 256 * 2**20


class ZarrCodec(ResultCodec):
    """Large arrays (and zarr arrays) as content-addressed zarr, returned lazily.

    A numpy array of at least ``$KACHERY_TASKS_ZARR_THRESHOLD`` bytes (default
    256 MiB) or any zarr array is written chunk by chunk into the content store
    (:mod:`kachery_tasks.storage.zarr_store`); the stored result is the array's
    index, so the result URI is the array's URI. Callers get a read-only
    ``zarr.Array`` that reads only the chunks they touch.
    """

    name, extension, inline = "zarr", "json", False

    def accepts(self, value: Any) -> bool:
        module = type(value).__module__
        if module.startswith("zarr"):
            import zarr

            return isinstance(value, zarr.Array)
        if "numpy" not in module:
            return False
        import numpy as np

        limit = int(os.environ.get(ENV_ZARR_THRESHOLD, ZARR_THRESHOLD))
        return (
            isinstance(value, np.ndarray) and not value.dtype.hasobject
            and value.nbytes >= limit and value.ndim > 0
        )

    def encode(self, value: Any) -> bytes:
        from ..nodes import current_node
        from ..zarr_arrays import store_zarr

        return current_node().store.load_bytes(store_zarr(value))

    def decode(self, path: str) -> Any:
        """The lazy array; ContentNotFoundError (the cache then computes again) when
        some of its chunks are gone from here (gc) and no remote can supply them."""
        from ..nodes import current_node
        from ..zarr_arrays import load_zarr, missing_blobs

        uri = f"sha256://{os.path.basename(path)}"
        missing = [] if current_node().remotes else missing_blobs(uri)  # a remote has them
        if missing:
            raise ContentNotFoundError(
                f"{len(missing)} chunk(s) of the zarr result {uri} are no longer here "
                "and the node has no remote to fetch them from"
            )
        return load_zarr(uri)

    def memo(self, value: Any, data: bytes | memoryview | None) -> MemoEntry:
        """Keep the lazy store-backed array (it holds no data in memory)."""
        if getattr(getattr(value, "store", None), "uri", None) is None:
            import hashlib

            from ..zarr_arrays import load_zarr

            if data is None:
                data = self.encode(value)
            value = load_zarr(f"sha256://{hashlib.sha256(data).hexdigest()}")
        return (None, value, 4096)


class PickleCodec(ResultCodec):
    name, extension, inline = "pickle", "pkl", True

    def accepts(self, value: Any) -> bool:
        return True

    def encode(self, value: Any) -> bytes:
        if _is_iterator(value):
            raise ResultEncodingError(
                f"a task returned a {type(value).__name__}, which is consumed when read and "
                "cannot be stored; return a list (e.g. list(...)) instead"
            )
        import cloudpickle

        try:
            return cloudpickle.dumps(value, protocol=5)
        except Exception as e:
            raise ResultEncodingError(
                f"the result of type {type(value).__module__}.{type(value).__qualname__} cannot "
                f"be stored: it is not JSON data, not an array, and it cannot be pickled ({e}). "
                "Return plain data, arrays, or a picklable object"
            ) from e

    def decode(self, path: str) -> Any:
        with open(path, "rb") as f:
            return self._loads(f.read())

    def decode_bytes(self, data: bytes) -> Any:
        return self._loads(data)

    def _loads(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)


def _is_iterator(v: Any) -> bool:
    import types

    return isinstance(v, types.GeneratorType | types.CoroutineType | types.AsyncGeneratorType)


_lock = threading.Lock()
_CODECS: list[ResultCodec] = [JsonCodec(), ZarrCodec(), NpyCodec(), PickleCodec()]


def register_codec(codec: ResultCodec, before: str = "pickle") -> None:
    """Add ``codec`` to the registry, tried just before the codec named ``before``.

    A codec with the same name is replaced. ``pickle`` stays last: it accepts
    everything.
    """
    if not codec.name:
        raise ResultEncodingError("a result codec needs a name")
    with _lock:
        codecs = [c for c in _CODECS if c.name != codec.name]
        names = [c.name for c in codecs]
        where = names.index(before) if before in names else len(codecs) - 1
        codecs.insert(where, codec)
        _CODECS[:] = codecs


def codec_named(name: str) -> ResultCodec:
    """The registered codec called ``name`` (ResultEncodingError when unknown)."""
    for c in _CODECS:
        if c.name == name:
            return c
    raise ResultEncodingError(
        f"no result codec named {name!r} is registered in this process; import the module "
        "that registers it"
    )


def choose(value: Any) -> ResultCodec:
    """The first registered codec that accepts ``value``."""
    for c in _CODECS:
        if c.accepts(value):
            return c
    raise ResultEncodingError(f"no codec accepts {type(value).__qualname__}")  # pragma: no cover


def encode(value: Any) -> tuple[ResultCodec, bytes | memoryview]:
    """Choose a codec for ``value`` and encode it; ResultEncodingError when impossible."""
    codec = choose(value)
    return codec, codec.encode(value)


# --------------------------------------------------------------- trust
_allowed: set[str] = set()


def allow_pickles_from(*node_ids: str) -> None:
    """Allow loading pickled results produced by these nodes (``"*"``: any node).

    Unpickling runs code chosen by whoever made the pickle: allow only nodes
    you trust as much as your own code.
    """
    with _lock:
        _allowed.update(n.lower() for n in node_ids)


def pickle_allowed(producer: str, own_node: str) -> bool:
    """True when a pickle made by node ``producer`` may be loaded here."""
    if producer == own_node:
        return True
    env = {n.strip().lower() for n in os.environ.get(ENV_ALLOW, "").split(",") if n.strip()}
    allowed = _allowed | env
    return "*" in allowed or producer.lower() in allowed


def check_trust(codec: str, producer: str, own_node: str, task_id: str) -> None:
    """Raise UntrustedPickleError for a pickle from a node the user has not allowed."""
    if codec == "pickle" and not pickle_allowed(producer, own_node):
        raise UntrustedPickleError(
            f"the result of {task_id} is a pickle produced by node {producer[:16]}..., not by "
            "this node; unpickling runs code, so it is not loaded. If you trust that node, call "
            f"kachery.allow_pickles_from({producer!r}) or set {ENV_ALLOW}={producer}"
        )
