import multiprocessing as mp
import random
import sqlite3
import threading

import pytest

from kachery_tasks import db
from kachery_tasks.db import connect, transaction
from kachery_tasks.errors import StorageError, StorageFullError

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT);"


def _open_and_write(path, i, barrier):
    from pathlib import Path

    barrier.wait()
    conn = connect(Path(path), SCHEMA)
    conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (i, "x"))


def test_many_processes_creating_one_database_at_once(tmp_path):
    ctx = mp.get_context("fork")
    path = tmp_path / "new.db"
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_and_write, args=(str(path), i, barrier)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    conn = connect(path, SCHEMA)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 6
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ------------------------------------------------------------ damaged / full
def _filled(path, rows=400):
    conn = connect(path, SCHEMA)
    with transaction(conn):
        conn.executemany(
            "INSERT INTO t (k, v) VALUES (?, ?)", [(i, "v" * 300) for i in range(rows)]
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_a_corrupted_page_is_a_one_line_storage_error_naming_the_database(tmp_path):
    path = tmp_path / "some.db"
    _filled(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # garble a page in the middle of the table
        f.seek(4096 * (size // 4096 // 2))
        f.write(b"\xa5" * 4096)
    conn = connect(path, SCHEMA, damaged_advice="restore it from the lab backup")
    with pytest.raises(StorageError) as e:
        conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    assert not isinstance(e.value, sqlite3.Error)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "damaged" in msg
    assert msg.endswith("restore it from the lab backup")


def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not SQLite" * 500)
    with pytest.raises(StorageError, match=f"database {path} is damaged.*move it aside"):
        connect(path, SCHEMA)


def test_busy_and_constraint_errors_stay_sqlite_errors(tmp_path):
    conn = connect(tmp_path / "a.db", SCHEMA)
    conn.execute("INSERT INTO t (k, v) VALUES (1, 'x')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO t (k, v) VALUES (1, 'y')")
    other = connect(tmp_path / "a.db", SCHEMA)
    other.execute("PRAGMA busy_timeout=0")
    with transaction(conn), pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")


def _hold_write_lock(path, seconds, key=100):
    """Another writer: a connection holding the write lock for ``seconds`` (in a thread)."""
    other = connect(path, SCHEMA)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (k, v) VALUES (?, 'other')", (key,))

    def commit_later():
        threading.Event().wait(seconds)
        other.execute("COMMIT")

    t = threading.Thread(target=commit_later)
    t.start()
    return t


def test_a_polling_connection_waits_out_another_writer_outside_a_transaction(tmp_path):
    path = tmp_path / "a.db"
    conn = connect(path, SCHEMA, poll_busy=True)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # polled, not SQLite's sleeps
    t = _hold_write_lock(path, 0.3)
    conn.execute("INSERT INTO t (k, v) VALUES (1, 'mine')")  # an autocommit write
    t.join()
    t = _hold_write_lock(path, 0.3, key=101)
    with transaction(conn):  # BEGIN IMMEDIATE waits too
        conn.execute("INSERT INTO t (k, v) VALUES (2, 'mine')")
    t.join()
    rows = conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    assert rows == [(1, "mine"), (2, "mine"), (100, "other"), (101, "other")]


def test_retries_leave_the_global_random_numbers_alone():
    """A user's seeded ``random`` gives the same numbers whether or not kachery-tasks
    retried a busy database meanwhile (its retries also run in background threads)."""
    attempts = []

    def busy_twice():
        attempts.append(1)
        if len(attempts) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    assert db.retry_while_locked(busy_twice, first_delay=1e-4, max_delay=1e-3) == "done"
    assert len(attempts) == 3
    assert [random.random() for _ in range(3)] == expected


def test_a_polling_connection_gives_up_after_the_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "a.db"
    conn = connect(path, SCHEMA, poll_busy=True)
    t = _hold_write_lock(path, 1.5)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("INSERT INTO t (k, v) VALUES (1, 'mine')")
    t.join()
    conn.execute("INSERT INTO t (k, v) VALUES (1, 'mine')")  # free again


def test_a_full_disk_is_storage_full_and_leaves_the_database_as_it_was(small_fs):
    path = small_fs("1M") / "full.db"
    conn = connect(path, SCHEMA)
    conn.execute("INSERT INTO t (k, v) VALUES (0, 'kept')")
    with pytest.raises(StorageFullError) as e, transaction(conn):
        for i in range(1, 10_000):
            conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (i, "x" * 1000))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not conn.in_transaction
    assert conn.execute("SELECT k, v FROM t").fetchall() == [(0, "kept")]
    conn.close()
    again = connect(path, SCHEMA)  # and from a fresh connection
    assert again.execute("SELECT k, v FROM t").fetchall() == [(0, "kept")]
    again.execute("INSERT INTO t (k, v) VALUES (1, 'small')")  # room for small writes again
