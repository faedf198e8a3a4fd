"""Leases: at most one process computes a given task id at a time.

The protocol (every step is one SQLite transaction on ``<node>/tasks/records.db``,
so it holds between processes, Dask workers and threads alike):

1. **Acquire.** Inside ``BEGIN IMMEDIATE`` read the lease row of the task id.
   If there is none, or its holder is *dead* (same host and its pid is gone,
   or the pid now belongs to a process started at another time), or its
   ``expires`` is in the past (a holder on another host that stopped
   heartbeating), write our row -- a fresh random holder token, host, pid,
   pid start time, ``expires = now + ttl`` -- and commit: we hold the lease.
   The run row of the previous holder, if it was still ``running``, is
   marked ``abandoned`` in the same transaction. Otherwise someone else holds
   the lease.
2. **Heartbeat.** While a process holds leases, one daemon thread pushes
   their ``expires`` forward every ``ttl / 3`` seconds.
3. **Release.** The holder deletes its row (matched by token) in the same
   transaction that records the outcome, so a waiter never sees the lease
   gone before the result is recorded.
4. **Wait.** A process that did not get the lease polls (1 ms, doubling up to
   250 ms): a recorded result is loaded; a lease that is gone (the holder
   failed: failures are never results) or stale is acquired and the task is
   computed here.

A process killed mid-task therefore leaves a lease that the next caller on
the same host takes over at once (the pid is gone), and a ``running`` run
row that never claims success. Leases are never a correctness condition for
*results* (pure results are interchangeable); they only avoid duplicate work
and keep actions to one run per id.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

from ..errors import KacheryError
from ..processes import HOST, MY_START, pid_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    task_id   TEXT PRIMARY KEY,
    holder    TEXT NOT NULL,
    host      TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    pid_start TEXT,
    acquired  REAL NOT NULL,
    expires   REAL NOT NULL
) WITHOUT ROWID;
"""

DEFAULT_TTL = 30.0
ENV_TTL = "KACHERY_TASKS_LEASE_TTL"


def lease_ttl() -> float:
    """The lease time-to-live in seconds (``$KACHERY_TASKS_LEASE_TTL``, default 30)."""
    try:
        return max(0.05, float(os.environ.get(ENV_TTL, DEFAULT_TTL)))
    except ValueError:
        return DEFAULT_TTL


@dataclass(frozen=True)
class Lease:
    """A lease row: who holds which task id until when."""

    task_id: str
    holder: str
    host: str
    pid: int
    pid_start: str | None
    acquired: float
    expires: float

    def is_stale(self, now: float | None = None) -> bool:
        """True when the holder is dead or its lease has expired: it may be taken over."""
        now = time.time() if now is None else now
        if self.expires < now:
            return True
        return self.host == HOST and not pid_alive(self.pid, self.pid_start)






def _row(r: tuple | None) -> Lease | None:
    return Lease(*r) if r else None


def get(conn: sqlite3.Connection, task_id: str) -> Lease | None:
    """The current lease of ``task_id`` (possibly stale), or None."""
    return _row(
        conn.execute(
            "SELECT task_id, holder, host, pid, pid_start, acquired, expires FROM leases "
            "WHERE task_id=?",
            (task_id,),
        ).fetchone()
    )


def try_acquire(
    conn: sqlite3.Connection, task_id: str, ttl: float
) -> tuple[Lease | None, Lease | None]:
    """Step 1, inside the caller's IMMEDIATE transaction.

    Returns ``(lease, previous)``: ``lease`` is ours or None when a live holder
    has it; ``previous`` is the stale lease we took over, if any.
    """
    now = time.time()
    current = get(conn, task_id)
    if current is not None and not current.is_stale(now):
        return None, None
    pid = os.getpid()
    lease = Lease(task_id, secrets.token_hex(12), HOST, pid, MY_START, now, now + ttl)
    conn.execute(
        "INSERT OR REPLACE INTO leases (task_id, holder, host, pid, pid_start, acquired, expires) "
        "VALUES (?,?,?,?,?,?,?)",
        (lease.task_id, lease.holder, lease.host, lease.pid, lease.pid_start, lease.acquired,
         lease.expires),
    )
    return lease, current


def release(conn: sqlite3.Connection, lease: Lease) -> bool:
    """Step 3: drop our lease (True if it was still ours)."""
    cur = conn.execute(
        "DELETE FROM leases WHERE task_id=? AND holder=?", (lease.task_id, lease.holder)
    )
    return cur.rowcount > 0


class Heartbeat:
    """Step 2: one daemon thread per database that extends this process's leases."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn = conn
        self.lock = lock
        self.held: dict[str, float] = {}  # holder token -> ttl
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, lease: Lease, ttl: float) -> None:
        with self._cond:
            self.held[lease.holder] = ttl
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="kachery-lease-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, lease: Lease) -> None:
        with self._cond:
            self.held.pop(lease.holder, None)

    def _run(self) -> None:
        idle = 0
        interval = DEFAULT_TTL / 3
        while True:
            with self._cond:
                if self.held:
                    idle = 0
                    interval = min(self.held.values()) / 3
                else:
                    idle += 1
                    if idle > 3:  # linger a little: tasks often come in bursts
                        self._thread = None
                        return
                self._cond.wait(interval)
                held = dict(self.held)
            now = time.time()
            try:
                with self.lock:
                    for token, ttl in held.items():
                        self.conn.execute(
                            "UPDATE leases SET expires=? WHERE holder=?", (now + ttl, token)
                        )
            except (sqlite3.Error, KacheryError):
                continue  # a busy, full or closed database: try again next beat
