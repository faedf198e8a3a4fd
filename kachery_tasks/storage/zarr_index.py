"""The sealed key index of a content-addressed zarr hierarchy, without zarr itself.

A zarr hierarchy in the content store is named by the ``sha256://`` URI of a
small canonical-JSON document that maps every zarr key to the SHA-256 of the
blob holding its value::

    {"format": "kachery-tasks/zarr/1", "keys": {"<zarr key>": "<sha256 hex>", ...}}

This module reads and writes that document. It does not import zarr, so the
store's garbage collector, transfers and ``kachery-tasks info`` can read an
array's index without it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..canonical import canonical_json
from ..errors import InvalidValueError, StorageError
from ..uris import parse_uri

INDEX_FORMAT = "kachery-tasks/zarr/1"
INDEX_PREFIX = b'{"format":"' + INDEX_FORMAT.encode() + b'"'
_HEX_RUN = re.compile(r"[0-9a-f]*")


def encode_index(keys: dict[str, str]) -> bytes:
    """The canonical JSON of an index over ``keys`` (zarr key -> sha256 hex)."""
    return canonical_json({"format": INDEX_FORMAT, "keys": keys})


def is_index(head: bytes) -> bool:
    """Whether a blob starting with ``head`` is a zarr index (its canonical JSON opens so)."""
    return head.startswith(INDEX_PREFIX)


def decode_index(data: bytes, uri: str) -> dict[str, str]:
    """The key -> sha256 map of an index document; StorageError when ``data`` is not one."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise _not_an_index(uri)
    keys = doc.get("keys")
    if not isinstance(keys, dict) or not _all_hex(keys.values()):
        raise StorageError(f"{uri}: the zarr index has a malformed 'keys' map")
    return keys  # JSON object keys are always strings


def _all_hex(values: Iterable[object]) -> bool:
    """Whether every value is a SHA-256 hex string (checked in bulk: indexes are large)."""
    values = list(values)
    if not all(type(v) is str and len(v) == 64 for v in values):
        return False
    return _HEX_RUN.fullmatch("".join(values)) is not None  # type: ignore[arg-type]


def _not_an_index(uri: str) -> StorageError:
    return StorageError(
        f"{uri} is not a kachery-tasks zarr array (expected a JSON index with "
        f'"format": "{INDEX_FORMAT}"); store arrays with store_zarr'
    )


def missing_members(path: str, name: str, has: Callable[[str], bool]) -> list[str] | None:
    """The SHA-256 hex of each blob the index in the file at ``path`` names for which
    ``has(uri)`` is false, sorted; None when the file holds no index."""
    keys = read_index_file(path, name)
    if keys is None:
        return None
    return sorted(h for h in set(keys.values()) if not has(f"sha256://{h}"))


def read_index_file(path: str, name: str) -> dict[str, str] | None:
    """The key map of the index in the file at ``path``, or None when it holds no index.

    Only the first bytes of any other file are read.
    """
    with open(path, "rb") as f:
        if not is_index(f.read(len(INDEX_PREFIX))):
            return None
        f.seek(0)
        return decode_index(f.read(), name)


def read_index(uri: str, source: Any) -> dict[str, str]:
    """The key map of the index ``uri`` names, found through ``source`` (a
    :class:`~.zarr_store.ContentSource`: fetched from its remotes if need be).

    KacheryError when ``uri`` names no index. Indexes are immutable (named by
    their hash), so the last few read are kept parsed, per node: opening an
    array again costs a dict copy, not a JSON parse (about 0.6 us a chunk).
    """
    parsed = parse_uri(uri)  # InvalidURIError for anything that is not a content URI
    if parsed.algorithm != "sha256":
        raise InvalidValueError(f"{uri}: a zarr array is named by a sha256:// URI")
    key = (str(source.store.root), parsed.hex)  # per node: each fetches the index once
    with _index_lock:
        keys = _indexes.get(key)
        if keys is not None:
            _indexes.move_to_end(key)
    if keys is None:
        keys = read_index_file(source.local_path(uri), uri)
        if keys is None:
            raise _not_an_index(uri)
        with _index_lock:
            _indexes[key] = keys
            while len(_indexes) > _INDEXES_KEPT:
                _indexes.popitem(last=False)
    return dict(keys)


_INDEXES_KEPT = 16
_indexes: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
_index_lock = threading.Lock()
