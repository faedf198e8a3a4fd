import multiprocessing as mp

from kachery_tasks.db import connect

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
