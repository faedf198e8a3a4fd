"""SQLite connections the way every part of the node opens them.

WAL mode lets readers proceed while one process writes; a busy timeout makes
concurrent writers from several processes wait their turn instead of failing.
``synchronous=NORMAL`` in WAL keeps every committed transaction atomic and
consistent after a crash (a power loss may drop the last commits, never
half of one).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import StorageError, StoragePermissionError
from .fsutil import ensure_dir, share_file

T = TypeVar("T")

BUSY_TIMEOUT_MS = 60_000


def connect(path: Path, schema: str, shared: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and apply ``schema``.

    ``schema`` is a script of idempotent statements (``CREATE ... IF NOT EXISTS``).
    The connection is in autocommit mode; use :func:`transaction` for
    multi-statement writes.
    """
    ensure_dir(path.parent, shared)
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _set_up(conn, schema)
    except sqlite3.OperationalError as e:
        if "readonly" in str(e) or "unable to open" in str(e):
            raise StoragePermissionError(
                f"cannot write database {path}: {e}; check the owner and mode of "
                f"{path.parent} (a node directory shared by a group should be setgid and "
                "group-writable: chmod -R g+rwX,g+s DIR)"
            ) from e
        raise StorageError(f"cannot open database {path}: {e}") from e
    except sqlite3.DatabaseError as e:
        raise StorageError(
            f"cannot open database {path}: {e}; if it is corrupted, move it aside "
            "and run 'kachery-tasks verify' to rebuild what can be rebuilt"
        ) from e
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            share_file(p, shared)
    return conn


def _set_up(conn: sqlite3.Connection, schema: str) -> None:
    """Switch to WAL and apply the schema, waiting out other processes doing the same.

    Changing the journal mode of a database another process is creating can
    fail with "database is locked" at once, without the busy handler being
    consulted; that case is retried with backoff up to the busy timeout.
    """
    def set_up() -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema)

    retry_while_locked(set_up, first_delay=0.001, max_delay=0.1)


def retry_while_locked(fn: Callable[[], T], first_delay: float, max_delay: float) -> T:
    """``fn()``, retried with jittered, doubling sleeps while SQLite says the database
    is locked or busy, up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = first_delay
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)


class transaction:
    """``with transaction(conn): ...`` runs the block in one IMMEDIATE transaction.

    IMMEDIATE takes the write lock up front, so two processes doing
    read-then-write cannot interleave.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
