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

from ..canonical import canonical_json
from ..errors import StorageError

INDEX_FORMAT = "kachery-tasks/zarr/1"
INDEX_PREFIX = b'{"format":"' + INDEX_FORMAT.encode() + b'"'
_HEX = re.compile(r"^[0-9a-f]{64}$")


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
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _HEX.match(v) for k, v in keys.items()
    ):
        raise StorageError(f"{uri}: the zarr index has a malformed 'keys' map")
    return dict(keys)
