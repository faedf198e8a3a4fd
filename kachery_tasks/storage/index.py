"""The store's index: what the node holds, beyond the blobs themselves.

One SQLite table row per content id records its size, its SHA-1 alias (so
``sha1://`` URIs resolve), the label it was stored with, its manifest when it
is large, whether it is pinned, when it was last used (for garbage
collection) and, for files registered with ``link_file``, where the original
lives and how it looked when it was linked (size, mtime, ctime, inode).

The SHA-1 and the manifest are computed when first needed, not when content
is stored: ``sha1`` is :data:`SHA1_PENDING` (an empty string) until then,
and NULL for content that gets no alias (manifests, zarr chunks);
``manifest`` is NULL until the manifest of a large file is made; a manifest
blob that is gone or damaged is made again when next needed (or by
``verify``) and the reference replaced.

A row is written only after its blob is in place, and removed before its blob
is deleted: a crash can leave a blob without a row (``verify`` adopts it), never
a row that points at nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..db import connect, retry_while_locked, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256        TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    sha1          TEXT,
    label         TEXT,
    role          TEXT NOT NULL DEFAULT 'data',
    in_store      INTEGER NOT NULL DEFAULT 0,
    manifest      TEXT,
    pinned        INTEGER NOT NULL DEFAULT 0,
    stored        REAL NOT NULL,
    accessed      REAL NOT NULL,
    link_path     TEXT,
    link_size     INTEGER,
    link_mtime_ns INTEGER,
    link_ino      INTEGER,
    link_ctime_ns INTEGER
);
CREATE INDEX IF NOT EXISTS blobs_sha1 ON blobs(sha1);
CREATE INDEX IF NOT EXISTS blobs_accessed ON blobs(accessed);
"""

_COLUMNS = (
    "sha256, size, sha1, label, role, in_store, manifest, pinned, stored, accessed, "
    "link_path, link_size, link_mtime_ns, link_ino, link_ctime_ns"
)

# Columns added after the first release: (name, type), added to older databases on open.
_ADDED_COLUMNS = (("link_ctime_ns", "INTEGER"),)


# A blob now in the store: a new row, or what an existing row learns (never a
# label or alias dropped; data stays data even when stored again as a manifest).
_RECORD_BLOB = """
    INSERT INTO blobs (sha256, size, sha1, label, role, in_store, manifest, stored, accessed)
    VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
    ON CONFLICT(sha256) DO UPDATE SET
      in_store = 1, accessed = excluded.accessed,
      sha1 = COALESCE(NULLIF(blobs.sha1, ''), excluded.sha1, blobs.sha1),
      label = COALESCE(blobs.label, excluded.label),
      manifest = COALESCE(excluded.manifest, blobs.manifest),
      role = CASE WHEN blobs.role = 'data' THEN 'data' ELSE excluded.role END"""

SHA1_PENDING = ""  # the sha1 of content whose alias is still to be computed


@dataclass(frozen=True)
class Row:
    """One index row (see the module docstring for the meaning of each field)."""

    sha256: str
    size: int
    sha1: str | None
    label: str | None
    role: str
    in_store: bool
    manifest: str | None
    pinned: bool
    stored: float
    accessed: float
    link_path: str | None
    link_size: int | None
    link_mtime_ns: int | None
    link_ino: int | None
    link_ctime_ns: int | None  # None for links recorded before ctime was

    @property
    def sha1_pending(self) -> bool:
        """True when the content wants a SHA-1 alias that was not computed yet."""
        return self.sha1 == SHA1_PENDING


@dataclass(frozen=True)
class Link:
    """How a linked original looked when it was registered."""

    path: str
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int


class Index:
    """Thread-safe access to the index database of one store."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self._conn = connect(path, SCHEMA, shared)
        self._lock = threading.Lock()
        _add_columns(self._conn)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def get(self, sha256: str) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM blobs WHERE sha256 = ?", (sha256,))
        return _row(rows[0]) if rows else None

    def by_sha1(self, sha1: str) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM blobs WHERE sha1 = ? LIMIT 1", (sha1,))
        return _row(rows[0]) if rows else None

    def record_blob(
        self,
        sha256: str,
        size: int,
        sha1: str | None,
        label: str | None,
        role: str = "data",
        manifest: str | None = None,
    ) -> None:
        """Record that the blob is now in the store (after it was renamed into place)."""
        now = time.time()
        with self._lock:
            self._conn.execute(_RECORD_BLOB, (sha256, size, sha1, label, role, manifest, now, now))

    def record_blobs(self, blobs: list[tuple[str, int, str | None, str | None]]) -> None:
        """Record many (sha256, size, sha1, manifest) data blobs now in the store, at once."""
        now = time.time()
        with self._lock, transaction(self._conn) as c:
            c.executemany(
                _RECORD_BLOB,
                [(sha256, size, sha1, None, "data", manifest, now, now)
                 for sha256, size, sha1, manifest in blobs],
            )

    def record_link(
        self, sha256: str, size: int, sha1: str, label: str | None, manifest: str | None, link: Link
    ) -> None:
        """Record a linked original (the blob itself is not copied into the store)."""
        now = time.time()
        with self._lock:
            self._conn.execute(
                """INSERT INTO blobs (sha256, size, sha1, label, role, in_store, manifest,
                                      stored, accessed, link_path, link_size, link_mtime_ns,
                                      link_ino, link_ctime_ns)
                   VALUES (?, ?, ?, ?, 'data', 0, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(sha256) DO UPDATE SET
                     accessed = excluded.accessed, link_path = excluded.link_path,
                     link_size = excluded.link_size, link_mtime_ns = excluded.link_mtime_ns,
                     link_ino = excluded.link_ino, link_ctime_ns = excluded.link_ctime_ns,
                     sha1 = COALESCE(blobs.sha1, excluded.sha1),
                     label = COALESCE(blobs.label, excluded.label),
                     manifest = COALESCE(excluded.manifest, blobs.manifest)""",
                (sha256, size, sha1, label, manifest, now, now,
                 link.path, link.size, link.mtime_ns, link.ino, link.ctime_ns),
            )

    def sha1_pending(self) -> list[Row]:
        """The data rows whose SHA-1 alias is still to be computed, oldest first."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM blobs WHERE sha1 = ? AND role = 'data' ORDER BY stored",
            (SHA1_PENDING,),
        )
        return [_row(r) for r in rows]

    def set_sha1(self, sha256: str, sha1: str) -> None:
        """Record the SHA-1 alias computed for content whose alias was pending."""
        with self._lock:
            self._conn.execute(
                "UPDATE blobs SET sha1 = ? WHERE sha256 = ? AND sha1 = ?",
                (sha1, sha256, SHA1_PENDING),
            )

    def set_manifest(self, sha256: str, manifest: str) -> bool:
        """Record the manifest made for a file; False when the file has no row (any more)."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE blobs SET manifest = ? WHERE sha256 = ?", (manifest, sha256)
            )
            return cur.rowcount > 0

    def drop_link(self, sha256: str) -> None:
        """Forget a linked original; the row goes too unless the blob is in the store."""
        with self._lock, transaction(self._conn) as c:
            c.execute(
                "UPDATE blobs SET link_path = NULL, link_size = NULL, link_mtime_ns = NULL, "
                "link_ino = NULL, link_ctime_ns = NULL WHERE sha256 = ?",
                (sha256,),
            )
            c.execute("DELETE FROM blobs WHERE sha256 = ? AND in_store = 0", (sha256,))

    def drop_blob(self, sha256: str) -> None:
        """Record that the blob is leaving the store (call before deleting the file)."""
        with self._lock, transaction(self._conn) as c:
            c.execute("UPDATE blobs SET in_store = 0 WHERE sha256 = ?", (sha256,))
            c.execute(
                "DELETE FROM blobs WHERE sha256 = ? AND link_path IS NULL", (sha256,)
            )

    def touch(self, sha256: str, when: float) -> None:
        with self._lock:
            self._conn.execute("UPDATE blobs SET accessed = ? WHERE sha256 = ?", (when, sha256))

    def set_pinned(self, sha256: str, pinned: bool) -> bool:
        """Pin or unpin; False when the content is not in the index."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE blobs SET pinned = ? WHERE sha256 = ?", (int(pinned), sha256)
            )
            return cur.rowcount > 0

    def rows(self, role: str | None = None, order: str = "sha256") -> Iterator[Row]:
        """All rows (a snapshot), optionally of one role, in the given column order."""
        assert order in ("sha256", "accessed")
        where = "WHERE role = ?" if role else ""
        args = (role,) if role else ()
        for r in self._query(f"SELECT {_COLUMNS} FROM blobs {where} ORDER BY {order}", args):
            yield _row(r)

    def stored_bytes(self) -> tuple[int, int]:
        """(number of blobs in the store, their total size)."""
        rows = self._query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE in_store = 1")
        return rows[0][0], rows[0][1]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _row(r: tuple | sqlite3.Row) -> Row:
    (sha256, size, sha1, label, role, in_store, manifest, pinned, stored, accessed,
     link_path, link_size, link_mtime_ns, link_ino, link_ctime_ns) = r
    return Row(sha256, size, sha1, label, role, bool(in_store), manifest, bool(pinned),
               stored, accessed, link_path, link_size, link_mtime_ns, link_ino, link_ctime_ns)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Give an index written by an older version the columns added since."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(blobs)").fetchall()}
    for name, kind in _ADDED_COLUMNS:
        if name in have:
            continue
        try:
            retry_while_locked(
                lambda: conn.execute(f"ALTER TABLE blobs ADD COLUMN {name} {kind}"),  # noqa: B023
                first_delay=0.001, max_delay=0.1,
            )
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):  # another process added it first
                raise
