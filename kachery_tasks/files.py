"""The file and mutable functions of the public API, bound to this process's node.

``store_*`` functions put content into the node's store and return its
``sha256://`` URI; their ``load_*`` twins take a URI and give the content
back. Loading content that is not here raises ContentNotFoundError: these
functions never return None for "missing".

Values are encoded deterministically, so storing equal values twice gives the
same URI: JSON is canonical (sorted keys, no whitespace), arrays use the
``.npy`` format, pickles use protocol 5.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .canonical import canonical_json
from .errors import ContentNotFoundError, InvalidValueError, StorageError
from .fsutil import os_error, temp_path
from .storage.buckets import default_bucket
from .storage.local import FileInfo, get_store
from .storage.mutables import get_mutables

if TYPE_CHECKING:
    import numpy as np


def store_file(path: str | os.PathLike[str], label: str | None = None,
               progress: bool | None = None) -> str:
    """Copy a file into the store (hashing it in the same pass) and return its URI.

    ``label`` defaults to the file's name; ``progress=None`` shows a bar on a
    terminal for large files.
    """
    return get_store().store_file(path, label=label, progress=progress)


def link_file(path: str | os.PathLike[str], label: str | None = None,
              progress: bool | None = None) -> str:
    """Register a (large) file where it is, without copying, and return its URI.

    If the original later changes or disappears, loading the URI raises
    LinkedFileError rather than serving the wrong bytes.
    """
    return get_store().link_file(path, label=label, progress=progress)


def load_file(uri: str, dest: str | os.PathLike[str] | None = None, verify: bool = False) -> str:
    """The local path of the content ``uri`` names (the blob itself, read-only).

    With ``dest`` the content is copied there (atomically) and ``dest`` is
    returned. ``verify=True`` re-hashes the content first and removes a blob
    whose bytes no longer match its id (CorruptContentError).
    """
    path = _local_path(uri, verify)
    if dest is None:
        return path
    return _copy_out(path, Path(dest))


def _local_path(uri: str, verify: bool = False) -> str:
    """The content's local path, fetched from the configured bucket when it is not here."""
    store = get_store()
    try:
        return store.load_file(uri, verify=verify)
    except ContentNotFoundError:
        bucket = default_bucket()
        if bucket is None:
            raise
    from .storage.sync import download

    return download(store, bucket, uri)


def _copy_out(path: str, dest: Path) -> str:
    try:
        is_dir, parent_exists = dest.is_dir(), dest.parent.exists()
    except OSError as e:  # a name too long, a loop of symlinks, ...
        raise InvalidValueError(f"cannot write {dest}: {e.strerror}") from e
    if is_dir:
        raise InvalidValueError(f"--dest {dest} is a directory; give a file name")
    if not parent_exists:
        raise InvalidValueError(f"cannot write {dest}: directory {dest.parent} does not exist")
    tmp = temp_path(dest.parent)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise os_error(e, f"cannot write {dest}") from e
    return str(dest)


def load_file_info(uri: str) -> FileInfo:
    """Size, local path, label, chunk count and more for content in the store."""
    return get_store().info(uri)


def store_bytes(data: bytes | bytearray | memoryview, label: str | None = None) -> str:
    """Store bytes and return their URI."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidValueError(f"store_bytes takes bytes, not {type(data).__name__}")
    return get_store().store_bytes(data, label=label)


def load_bytes(uri: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive; default the end) of the content."""
    _local_path(uri)
    return get_store().load_bytes(uri, start, end)


def store_text(text: str, label: str | None = None) -> str:
    """Store a string as UTF-8 and return its URI."""
    if not isinstance(text, str):
        raise InvalidValueError(f"store_text takes a str, not {type(text).__name__}")
    return store_bytes(text.encode("utf-8"), label=label)


def load_text(uri: str) -> str:
    """The content as a UTF-8 string."""
    data = load_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StorageError(f"{uri} is not UTF-8 text: {e}") from e


def store_json(value: Any, label: str | None = None) -> str:
    """Store a JSON value in canonical form (equal values give equal URIs)."""
    return store_bytes(canonical_json(value), label=label)


def load_json(uri: str) -> Any:
    """The JSON value stored under ``uri``."""
    try:
        return json.loads(load_bytes(uri))
    except ValueError as e:
        raise StorageError(f"{uri} is not JSON: {e}") from e


def store_npy(array: np.ndarray, label: str | None = None) -> str:
    """Store a numpy array in ``.npy`` format (object arrays are refused)."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype.hasobject:
        raise InvalidValueError(
            "store_npy cannot store arrays of Python objects; use store_pickle"
        )
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return store_bytes(buf.getbuffer(), label=label)


def load_npy(uri: str, mmap: bool = False) -> np.ndarray:
    """The array stored under ``uri``; ``mmap=True`` maps the blob read-only instead of reading."""
    import numpy as np

    path = _local_path(uri)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise StorageError(f"{uri} is not a .npy array: {e}") from e


def store_pickle(value: Any, label: str | None = None) -> str:
    """Store any picklable value (protocol 5). Prefer store_json/store_npy where they fit."""
    try:
        data = pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise InvalidValueError(f"cannot pickle {type(value).__name__}: {e}") from e
    return store_bytes(data, label=label)


def load_pickle(uri: str) -> Any:
    """Unpickle the content. Only load pickles you trust: unpickling runs code."""
    try:
        return pickle.loads(load_bytes(uri))
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise StorageError(f"{uri} is not a pickle: {e}") from e


def set_mutable(key: str, value: Any) -> None:
    """Set a node-local mutable (a JSON value under a string key)."""
    get_mutables().set(key, value)


def get_mutable(key: str, default: Any = None) -> Any:
    """The value of a mutable, or ``default`` when it is not set."""
    return get_mutables().get(key, default)


def delete_mutable(key: str) -> bool:
    """Remove a mutable; True if it was set."""
    return get_mutables().delete(key)


def list_mutables(prefix: str = "") -> dict[str, Any]:
    """All mutables whose key starts with ``prefix``."""
    return get_mutables().list(prefix)
