"""What a Dask worker spends recording one tiny task, beside bare SQLite doing the same.

A worker that runs a call for a node (``_run_on_worker``: what every Dask task of
kachery-tasks runs) takes the call's lease and inserts its run row in one
transaction, runs it, then records the outcome in another. This runs that path,
outside Dask, for tiny calls with fresh ids:

* in one thread, in two threads of one process (as a worker with two threads
  runs them), and in two processes sharing the node (as two workers do);
* beside the floor: bare ``sqlite3`` committing the same two transactions per
  call (BEGIN IMMEDIATE, the same statements, COMMIT), the same way;
* and in one thread with each result record also published to a ``file://``
  bucket in the same directory (signed, written create-only, flushed).

Every SQLite statement and system call lets go of the GIL; with a second
thread waiting for it, taking it back costs a thread switch. The difference
between one and two threads is that cost (docs/remote-tasks.md).

    python benchmarks/bench_worker_records.py [--calls N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def kachery_calls(node_dir: str, first: int, n: int, remotes: tuple[str, ...] = ()) -> None:
    """``n`` tiny calls with fresh ids through the worker's path, recorded in ``node_dir``
    (and each result record published to ``remotes``, as a provider's workers do)."""
    from _bench_remote_defs import tiny

    from kachery_tasks.runtime.executors import _run_on_worker

    spec = (node_dir, list(remotes))
    for x in range(first, first + n):
        call = tiny.prepare(x)
        assert _run_on_worker(tiny, spec, (call.task_id, "computed"), (x,), {}, "call") == x + 1


def sqlite_calls(db: str, first: int, n: int) -> None:
    """The floor: the same two write transactions per call with bare sqlite3."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(
        "CREATE TABLE IF NOT EXISTS leases (task_id TEXT PRIMARY KEY, holder TEXT, expires REAL);"
        "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, task_id TEXT, status TEXT);"
        "CREATE TABLE IF NOT EXISTS results (task_id TEXT PRIMARY KEY, data BLOB);")
    for x in range(first, first + n):
        tid = f"sha256:{x:064x}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT data FROM results WHERE task_id=?", (tid,)).fetchone()
        conn.execute("SELECT holder FROM leases WHERE task_id=?", (tid,)).fetchone()
        conn.execute("INSERT OR REPLACE INTO leases VALUES (?,?,?)", (tid, "me", time.time()))
        cur = conn.execute("INSERT INTO runs (task_id, status) VALUES (?, 'running')", (tid,))
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET status='success' WHERE id=?", (cur.lastrowid,))
        conn.execute("DELETE FROM leases WHERE task_id=?", (tid,))
        conn.execute("INSERT OR REPLACE INTO results VALUES (?,?)", (tid, b"1"))
        conn.execute("COMMIT")
    conn.close()


def in_threads(fn, where: str, n: int, threads: int) -> None:
    ts = [threading.Thread(target=fn, args=(where, (i + 1) * 10_000_000, n))
          for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _child(fn_name: str, where: str, first: int, n: int, out) -> None:
    fn = globals()[fn_name]
    fn(where, first - 100, 100)  # warm up
    c0 = time.process_time()
    fn(where, first, n)
    out.put(time.process_time() - c0)


def in_processes(fn, where: str, n: int, processes: int) -> float:
    """CPU seconds the processes used for their calls (their warm-up apart); their ids
    are not those of :func:`in_threads` (fresh ids: nothing served from the records)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ps = [ctx.Process(target=_child, args=(fn.__name__, where, (i + 1) * 100_000_000, n, out))
          for i in range(processes)]
    for p in ps:
        p.start()
    used = sum(out.get(timeout=600) for _ in ps)
    for p in ps:
        p.join()
    return used


def one_thread(fn, where: str, n: int) -> float:
    """CPU microseconds per call of ``fn`` in this thread, after a warm-up (which creates
    the database)."""
    fn(where, 1, 100)
    c0 = time.process_time()
    fn(where, 1_000, n)
    return (time.process_time() - c0) / n * 1e6


def measure(fn, where: str, n: int) -> list[tuple[str, float]]:
    """CPU microseconds per call: one thread, two threads, two processes."""
    rows = [("1 thread", one_thread(fn, where, n))]
    c0 = time.process_time()
    in_threads(fn, where, n, 2)
    rows.append(("2 threads of one process", (time.process_time() - c0) / (2 * n) * 1e6))
    rows.append(("2 processes", in_processes(fn, where, n, 2) / (2 * n) * 1e6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per thread or process")
    parser.add_argument("--dir", default=None, help="where the node lives (default: the "
                                                    "temporary directory)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-worker-records-", dir=args.dir))
    try:
        ours = measure(kachery_calls, str(root / "node"), args.calls)
        floor = measure(sqlite_calls, str(root / "bare.db"), args.calls)
        print(f"recording a tiny task's run, CPU per call ({args.calls} calls per thread or "
              f"process, {os.cpu_count()} CPUs, in {root.parent}):")
        print(f"  {'':26s} {'kachery-tasks':>14s} {'bare sqlite3':>13s} {'ratio':>6s}")
        for (what, k), (_, b) in zip(ours, floor, strict=True):
            print(f"  {what:26s} {k:11.0f} us {b:10.0f} us {k / b:5.1f}x")
        bucket = f"file://{root}/bucket"
        published = one_thread(lambda where, first, n: kachery_calls(where, first, n, (bucket,)),
                               str(root / "publishing"), args.calls)
        print(f"  1 thread, each result record also signed and written to a file:// bucket: "
              f"{published:.0f} us ({published - ours[0][1]:+.0f} us)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
