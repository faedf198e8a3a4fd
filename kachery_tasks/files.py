"""The file and mutable functions of the public API, acting on the current node.

``store_*`` functions put content into the node's store and return its
``sha256://`` URI; their ``load_*`` twins take a URI and give the content
back, fetching it through the node's remotes when it is not here (see
:mod:`kachery_tasks.nodes`). Content found nowhere raises
ContentNotFoundError: these functions never return None for "missing".

Values are encoded deterministically, so storing equal values twice gives the
same URI: JSON is canonical (sorted keys, no whitespace), arrays use the
``.npy`` format, pickles use protocol 5.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from typing import TYPE_CHECKING, Any

from .canonical import canonical_json
from .errors import InvalidValueError, StorageError
from .nodes import current_node

if TYPE_CHECKING:
    import numpy as np

    from .storage.local import FileInfo


def store_file(path: str | os.PathLike[str], label: str | None = None,
               progress: bool | None = None) -> str:
    """Copy a file into the store (hashing it in the same pass) and return its URI.

    ``label`` defaults to the file's name; ``progress=None`` shows a bar on a
    terminal for large files.
    """
    return current_node().store_file(path, label=label, progress=progress)


def link_file(path: str | os.PathLike[str], label: str | None = None,
              progress: bool | None = None) -> str:
    """Register a (large) file where it is, without copying, and return its URI.

    If the original later changes or disappears, loading the URI raises
    LinkedFileError rather than serving the wrong bytes.
    """
    return current_node().link_file(path, label=label, progress=progress)


def load_file(uri: str, dest: str | os.PathLike[str] | None = None, verify: bool = False) -> str:
    """The local path of the content ``uri`` names (the blob itself, read-only).

    Content that is not here is fetched (and verified) through the node's
    remotes. With ``dest`` the content is copied there (atomically) and
    ``dest`` is returned. ``verify=True`` re-hashes the content first and
    removes a blob whose bytes no longer match its id (CorruptContentError).
    """
    return current_node().load_file(uri, dest=dest, verify=verify)


def load_file_info(uri: str) -> FileInfo:
    """Size, local path, label, chunk count and more for content in the store."""
    return current_node().load_file_info(uri)


def store_bytes(data: bytes | bytearray | memoryview, label: str | None = None) -> str:
    """Store bytes and return their URI."""
    return current_node().store_bytes(data, label=label)


def load_bytes(uri: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive; default the end) of the content."""
    return current_node().load_bytes(uri, start, end)


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

    path = current_node().local_path(uri)
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
    current_node().set_mutable(key, value)


def get_mutable(key: str, default: Any = None) -> Any:
    """The value of a mutable, or ``default`` when it is not set."""
    return current_node().get_mutable(key, default)


def delete_mutable(key: str) -> bool:
    """Remove a mutable; True if it was set."""
    return current_node().delete_mutable(key)


def list_mutables(prefix: str = "") -> dict[str, Any]:
    """All mutables whose key starts with ``prefix``."""
    return current_node().list_mutables(prefix)
