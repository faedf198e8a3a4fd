"""The sealed key index of a content-addressed zarr hierarchy, without zarr itself.

A zarr hierarchy in the content store is named by the ``sha256://`` URI of a
small canonical-JSON document that maps every zarr key to the SHA-256 of the
blob holding its value::

    {"format": "kachery-tasks/zarr/1", "keys": {"<zarr key>": "<sha256 hex>", ...}}

This module reads and writes that document. It does not import zarr, so the
store's garbage collector can keep the chunks of a pinned array.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from ..canonical import canonical_json
from ..errors import StorageError

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
        raise StorageError(
            f"{uri} is not a kachery-tasks zarr array (expected a JSON index with "
            f'"format": "{INDEX_FORMAT}"); store arrays with store_zarr'
        )
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
