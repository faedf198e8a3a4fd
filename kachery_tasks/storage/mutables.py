"""Mutables: a node-local key/value store for convenience data (aliases, settings).

Keys are non-empty strings; values are JSON. They live in ``mutables.db``
(SQLite, WAL) in the node directory, so several processes may read and write
them at once. Mutables are not shared with other nodes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..canonical import canonical_json, check_text
from ..config import NodeDir
from ..db import connect
from ..errors import InvalidValueError

SCHEMA = """
CREATE TABLE IF NOT EXISTS mutables (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
);
"""

class Mutables:
    """The mutables of one node directory."""

    def __init__(self, node: NodeDir) -> None:
        self._conn = connect(node.sub("mutables.db"), SCHEMA, node.shared)
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to the JSON value ``value``."""
        _check_key(key)
        text = canonical_json(value, "a mutable's value").decode()
        with self._lock:
            self._conn.execute(
                "INSERT INTO mutables (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, text, time.time()),
            )

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is not set."""
        _check_key(key)
        with self._lock:
            row = self._conn.execute("SELECT value FROM mutables WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was set."""
        _check_key(key)
        with self._lock:
            return self._conn.execute("DELETE FROM mutables WHERE key = ?", (key,)).rowcount > 0

    def list(self, prefix: str = "") -> dict[str, Any]:
        """All mutables whose key starts with ``prefix``, in key order."""
        check_text(prefix, "a mutable key prefix")
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM mutables WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return {k: json.loads(v) for k, v in rows}


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a mutable key must be a non-empty string, not {key!r}")
    check_text(key, "a mutable key")


_instances: dict[Path, Mutables] = {}


def get_mutables(node: NodeDir) -> Mutables:
    """The Mutables of ``node``."""
    m = _instances.get(node.path)
    if m is None:
        m = _instances[node.path] = Mutables(node)
    return m
