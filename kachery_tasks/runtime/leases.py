"""Leases: at most one process computes a given task id at a time.

The protocol (every step is one SQLite transaction on ``<node>/tasks/records.db``,
so it holds between processes, Dask workers and threads alike):

1. **Acquire.** Inside ``BEGIN IMMEDIATE`` read the lease row of the task id.
   If there is none, or its holder is gone, write our row -- a fresh random
   holder token, host, pid, pid start time, ``expires = now + ttl`` -- and
   commit: we hold the lease. The run row of the previous holder, if it was
   still ``running``, is marked ``abandoned`` in the same transaction.
   Otherwise someone else holds the lease.

   *Gone* depends on where the holder runs. On **this host** (same host
   name) it is a question of fact: the holder is gone when its process has
   ended (its pid is free, a zombie, or belongs to a process started at
   another time) -- or, for this very process, when the token is not one it
   holds. A holder that is alive is never taken over, however long it has
   not renewed its lease: a process stopped by SIGSTOP or stuck in a long C
   call that holds the GIL (its heartbeat thread cannot run) is still
   working, and taking over would run the task twice. (Where process start
   times are unknown, without /proc, an expired lease is gone too: a reused
   pid could not be told apart.) On **another host** (a node directory on a
   network file system) liveness cannot be checked, so the lease is gone
   once ``expires`` is in the past: such a holder must renew within the TTL
   (``KACHERY_TASKS_LEASE_TTL``, default 30 s; raise it above the longest
   stall expected on those machines).
2. **Heartbeat.** While a process holds leases, one daemon thread pushes
   their ``expires`` forward every ``ttl / 3`` seconds.
3. **Release.** The holder deletes its row (matched by token) in the same
   transaction that records the outcome, so a waiter never sees the lease
   gone before the result is recorded.
4. **Wait.** A process that did not get the lease polls (1 ms, doubling up to
   250 ms): a recorded result is loaded; a lease that is gone (released by a
   holder that failed: failures are never results, or whose holder is gone
   as above) is acquired and the task is computed here.

A process killed mid-task therefore leaves a lease that the next caller on
the same host takes over at once (the pid is gone), and a ``running`` run
row that never claims success. Leases are never a correctness condition for
*results* (pure results are interchangeable); they avoid duplicate work and
keep actions to one run per id.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

from ..errors import KacheryError
from ..processes import HOST, my_start_time, pid_alive

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
        """True when the holder is gone (see the module docstring): it may be taken over.

        On this host: its process ended (or, in this process, the token is not
        held here); expiry does not count, unless the holder's start time is
        unknown (no /proc), which leaves a reused pid undetectable. On another
        host: it expired.
        """
        now = time.time() if now is None else now
        if self.host == HOST:
            if self.pid == os.getpid() and self.pid_start == my_start_time():
                return self.holder not in _held_here
            if not pid_alive(self.pid, self.pid_start):
                return True
            return self.pid_start is None and self.expires < now
        return self.expires < now


# Holder tokens of the leases this process holds (from try_acquire to Heartbeat.remove).
_held_here: set[str] = set()






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
    has it; ``previous`` is the stale lease we took over, if any. The caller
    passes ``lease`` to :meth:`Heartbeat.add` once committed, and to
    :meth:`Heartbeat.remove` when done with it.
    """
    now = time.time()
    current = get(conn, task_id)
    if current is not None and not current.is_stale(now):
        return None, None
    pid = os.getpid()
    lease = Lease(task_id, secrets.token_hex(12), HOST, pid, my_start_time(), now, now + ttl)
    _held_here.add(lease.holder)  # before commit: our other threads must see it held
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
            _held_here.add(lease.holder)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="kachery-lease-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, lease: Lease) -> None:
        with self._cond:
            self.held.pop(lease.holder, None)
            _held_here.discard(lease.holder)

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
