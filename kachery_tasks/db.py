"""SQLite connections the way every part of the node opens them.

WAL mode lets readers proceed while one process writes; a busy timeout makes
concurrent writers from several processes wait their turn instead of failing.
A connection opened with ``poll_busy`` (the task records, written by every
Dask worker thread of a node at each task) waits its turn by polling from
Python instead, every 50 us at first: SQLite's own busy handler sleeps at
least a millisecond, while writers there hold the lock for tens of
microseconds. Its statements outside a transaction (``BEGIN IMMEDIATE``
included) are retried while the database is busy, up to the same timeout.
``synchronous=NORMAL`` in WAL keeps every committed transaction atomic and
consistent after a crash (a power loss may drop the last commits, never
half of one).

Every error SQLite reports about the database itself becomes a one-line
:class:`~kachery_tasks.errors.KacheryError` naming the database file and what
to do, wherever the statement runs (connections from :func:`connect` translate
them): a full disk is a StorageFullError, a damaged file (a corrupted page,
or not a database at all) a StorageError that says how to recover, and a
file the user may not write a StoragePermissionError. "Busy" and "locked"
stay ``sqlite3.OperationalError`` (callers retry those), and constraint
violations stay ``sqlite3.IntegrityError``.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import KacheryError, StorageError, StorageFullError, StoragePermissionError
from .fsutil import ensure_dir, share_file

T = TypeVar("T")

BUSY_TIMEOUT_MS = 60_000

DAMAGED_ADVICE = (
    "move it aside with its -wal and -shm files (an empty one is created on next use) and "
    "restore it from a backup if you have one; after moving store/index.db aside, "
    "'kachery-tasks verify' re-indexes the stored files"
)

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 3, 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26


def database_error(e: sqlite3.Error, path: Path | str, advice: str = DAMAGED_ADVICE) -> Exception:
    """The KacheryError for a SQLite error about the database file at ``path``.

    Errors that are not about the file (busy, locked, constraints, bad SQL)
    come back unchanged. ``advice`` says how to recover a damaged database.
    """
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(e).replace("\n", " ")
    if primary == _SQLITE_FULL:
        return StorageFullError(
            f"cannot write database {path}: no space left on the device ({text}); nothing "
            "was written. Free some space or run 'kachery-tasks gc --max-size SIZE'"
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StorageError(f"database {path} is damaged ({text}); {advice}")
    if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
        return StoragePermissionError(
            f"cannot write database {path}: {text}; check the owner and mode of "
            f"{Path(path).parent} (a node directory shared by a group should be setgid and "
            "group-writable: chmod -R g+rwX,g+s DIR)"
        )
    if primary == _SQLITE_IOERR:
        return StorageError(
            f"cannot read or write database {path} ({text}); check the disk and the file system"
        )
    return e


def _translating(name: str) -> Any:
    """Cursor method ``name`` (the C one) raising :func:`database_error`s."""
    base = getattr(sqlite3.Cursor, name)

    def method(self: sqlite3.Cursor, *args: Any) -> Any:
        try:
            return base(self, *args)
        except sqlite3.Error as e:
            raise self.connection.translate(e) from e

    method.__name__ = method.__qualname__ = name
    return method


class _Cursor(sqlite3.Cursor):
    """A cursor whose statements and fetches raise :func:`database_error`s."""

    execute = _translating("execute")
    executemany = _translating("executemany")
    executescript = _translating("executescript")
    fetchone = _translating("fetchone")
    fetchmany = _translating("fetchmany")
    fetchall = _translating("fetchall")
    __next__ = _translating("__next__")


class Connection(sqlite3.Connection):
    """A connection (from :func:`connect`) whose errors name its database file."""

    db_path: str = "?"
    damaged_advice: str = DAMAGED_ADVICE
    polls_busy: bool = False  # see connect(poll_busy=...)

    def translate(self, e: sqlite3.Error) -> Exception:
        return database_error(e, self.db_path, self.damaged_advice)

    def cursor(self, factory: Any = _Cursor) -> Any:  # type: ignore[override]
        return _new_cursor(self, factory)

    # The statements of the hot paths, calling the C methods directly (a
    # translated error costs nothing until there is one).
    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:  # type: ignore[override]
        try:
            return _execute(_new_cursor(self, _Cursor), sql, parameters)
        except sqlite3.OperationalError as e:
            if self.polls_busy and _is_busy(e) and not self.in_transaction:
                return self._polled(sql, parameters)
            raise self.translate(e) from e
        except sqlite3.Error as e:
            raise self.translate(e) from e

    def _polled(self, sql: str, parameters: Any) -> _Cursor:
        """``execute`` again while the database is busy (a connection with ``poll_busy``)."""
        try:
            return retry_while_locked(
                lambda: _execute(_new_cursor(self, _Cursor), sql, parameters),
                first_delay=POLL_FIRST_DELAY, max_delay=POLL_MAX_DELAY)
        except sqlite3.Error as e:
            raise self.translate(e) from e

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:  # type: ignore[override]
        try:
            return _executemany(_new_cursor(self, _Cursor), sql, parameters)
        except sqlite3.Error as e:
            raise self.translate(e) from e

    def executescript(self, sql_script: str, /) -> _Cursor:  # type: ignore[override]
        return self.cursor().executescript(sql_script)


_new_cursor = sqlite3.Connection.cursor
_execute = sqlite3.Cursor.execute
_executemany = sqlite3.Cursor.executemany


def connect(
    path: Path, schema: str, shared: bool = False, damaged_advice: str = DAMAGED_ADVICE, *,
    poll_busy: bool = False,
) -> Connection:
    """Open (creating if needed) the database at ``path`` and apply ``schema``.

    ``schema`` is a script of idempotent statements (``CREATE ... IF NOT EXISTS``).
    The connection is in autocommit mode; use :func:`transaction` for
    multi-statement writes. ``damaged_advice`` is what the error for a damaged
    database tells the user to do (it depends on what the database holds).
    With ``poll_busy``, ``execute`` outside a transaction polls a busy database
    (every 50 us at first, backing off to 2 ms) instead of SQLite's busy handler:
    for a database many threads and processes write in short transactions.
    """
    ensure_dir(path.parent, shared)
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False,
            factory=Connection,
        )
    except sqlite3.Error as e:
        raise database_error(e, path, damaged_advice) from e
    conn.db_path = str(path)
    conn.damaged_advice = damaged_advice
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _set_up(conn, schema)
        if poll_busy:
            conn.execute("PRAGMA busy_timeout=0")
            conn.polls_busy = True
    except BaseException:
        conn.close()
        raise
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


POLL_FIRST_DELAY = 50e-6
POLL_MAX_DELAY = 2e-3

_jitter = random.Random()
"""The retries' own generator: they run in background threads too (heartbeats, daemons),
and drawing from the global one would change the numbers of a user's seeded ``random``."""


def _is_busy(e: sqlite3.OperationalError) -> bool:
    """Whether SQLite said the database is locked or busy (another writer holds it)."""
    text = str(e)
    return "locked" in text or "busy" in text


def retry_while_locked(fn: Callable[[], T], first_delay: float, max_delay: float) -> T:
    """``fn()``, retried with jittered, doubling sleeps while SQLite says the database
    is locked or busy, up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = first_delay
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + _jitter.random()))
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
            rollback(self.conn)


def rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction after a failure, keeping that failure the one raised.

    SQLite may already have rolled back (a full disk, for one); a rollback
    that fails too is ignored, as the connection has no transaction left then.
    """
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except (sqlite3.Error, KacheryError):
            pass
