"""Result records and provenance in ``<node>/tasks/records.db``.

Tables:

* ``runs``: one row per execution attempt: task id, kind, function,
  version, code hash, the id's components (per-argument hashes), a short
  summary of the arguments, input URIs, result URI and codec, the node that
  computed it, host and pid, started and finished times, status
  (``running``, ``success``, ``error``, ``abandoned``) and the error.
* ``results``: the cache, one row per task id: the run whose outcome is
  served. Pure and query rows are always successes; an action's row is its
  outcome, success or error. A small encoded result (at most
  ``KACHERY_TASKS_INLINE_MAX`` bytes, default 4096) is kept in the row's
  ``data`` column instead of a blob: its ``result_uri`` is still the
  ``sha256://`` of exactly those bytes, and ``NodeCache.materialize`` writes
  them to the content store when they must travel.
* ``edges``: call edges, parent task id -> child task id.
* ``damaged``: task ids whose served result was found damaged and dropped
  (see ``NodeCache.load``), until the run that computes them again records
  it as its reason (``damaged: <what was wrong>``).
* ``requests``: calls this node ran or served for other nodes of a channel
  (a provider, ``node start --provide``): task id, the requester's node id
  and label, the channel, when, and how it ended. A table of its own, made
  on open: node directories from before it read and write as they did.
* ``leases``: see :mod:`.leases`.

Invariants: a ``results`` row is written only after its result blob is in
the store (or with its bytes inline), in the same transaction that marks the run ``success`` and
releases the lease. A failure of a pure task or a query updates its run row
only, so it is never served as a cached result. A process killed mid-task
leaves its run ``running`` (later marked ``abandoned``), never ``success``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..db import connect, rollback
from ..errors import KacheryError
from . import leases

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS runs (
    run_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    function   TEXT NOT NULL,
    version    TEXT,
    code_hash  TEXT,
    components TEXT NOT NULL,
    args       TEXT NOT NULL,
    inputs     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    result_uri TEXT,
    codec      TEXT,
    node       TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    lease      TEXT,
    started    REAL NOT NULL,
    finished   REAL,
    status     TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS runs_task ON runs(task_id, run_id);
CREATE INDEX IF NOT EXISTS runs_function ON runs(function, run_id);
CREATE TABLE IF NOT EXISTS results (
    task_id    TEXT PRIMARY KEY,
    run_id     INTEGER,
    kind       TEXT NOT NULL,
    function   TEXT NOT NULL,
    status     TEXT NOT NULL,
    result_uri TEXT,
    codec      TEXT,
    node       TEXT NOT NULL,
    finished   REAL NOT NULL,
    error      TEXT,
    data       BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges (
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_child ON edges(child);
CREATE TABLE IF NOT EXISTS requests (
    task_id   TEXT NOT NULL,
    requester TEXT NOT NULL,
    label     TEXT NOT NULL,
    channel   TEXT NOT NULL,
    received  REAL NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_task ON requests(task_id, received);
CREATE TABLE IF NOT EXISTS damaged (
    task_id TEXT PRIMARY KEY,
    detail  TEXT NOT NULL,
    found   REAL NOT NULL
) WITHOUT ROWID;
"""
    + leases.SCHEMA
)

DAMAGED_ADVICE = (
    "move it aside with its -wal and -shm files: an empty one is created on the next call, "
    "and tasks are computed again (stored results are kept); or restore it from a backup"
)

_RESULT_COLS = (
    "task_id, run_id, kind, function, status, result_uri, codec, node, finished, error, data"
)


@dataclass(frozen=True)
class ResultRow:
    """The cached outcome of a task id."""

    task_id: str
    run_id: int | None
    kind: str
    function: str
    status: str
    result_uri: str | None
    codec: str | None
    node: str
    finished: float
    error: str | None
    data: bytes | None = None  # the encoded result, when it is small enough to keep inline


@dataclass(frozen=True)
class RunStart:
    """What is known about a call when it starts running."""

    task_id: str
    kind: str
    function: str
    version: str | None
    code_hash: str | None
    components: dict
    args: dict
    inputs: list
    reason: str
    node: str


@dataclass(frozen=True)
class Run(RunStart):
    """One execution attempt (see the module docstring): its start, then how it went."""

    run_id: int
    result_uri: str | None
    codec: str | None
    host: str
    pid: int
    lease: str | None
    started: float
    finished: float | None
    status: str
    error: str | None

    @classmethod
    def from_row(cls, r: Sequence) -> Run:
        values = dict(zip(_RUN_FIELDS, r, strict=True))
        for name in _JSON_FIELDS:
            values[name] = json.loads(values[name])
        return cls(**values)

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def effective_status(self) -> str:
        """``running`` only while the process that runs it is alive on this host."""
        if self.status == "running" and self.host == leases.HOST and not leases.pid_alive(
            self.pid
        ):
            return "abandoned"
        return self.status


_START_FIELDS = tuple(f.name for f in fields(RunStart))
_RUN_FIELDS = tuple(f.name for f in fields(Run))
_RUN_COLS = ", ".join(_RUN_FIELDS)
_JSON_FIELDS = ("components", "args", "inputs")


class Records:
    """The records database of one node (thread-safe: one lock around the connection)."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self.conn = connect(path, SCHEMA, shared, DAMAGED_ADVICE, poll_busy=True)
        self.lock = threading.RLock()
        self.heartbeat = leases.Heartbeat(self.conn, self.lock)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE write transaction, waiting for other writers in short steps.

        SQLite's own busy handler sleeps at least 1 ms per retry; writers here
        hold the lock for tens of microseconds, so the connection polls every
        50-2000 us (``connect(poll_busy=True)``), which keeps two busy
        processes (e.g. Dask workers) from stalling each other.
        """
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")  # polled while another writer holds it
            try:
                yield conn
            except BaseException:
                rollback(conn)
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------- cache
    def result(self, task_id: str) -> ResultRow | None:
        """The served outcome of ``task_id``, or None."""
        with self.lock:
            r = self.conn.execute(
                f"SELECT {_RESULT_COLS} FROM results WHERE task_id=?", (task_id,)
            ).fetchone()
        return ResultRow(*r) if r else None

    def results_many(self, task_ids: Iterable[str]) -> dict[str, ResultRow]:
        """The served outcomes of many task ids at once (absent ids are left out)."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, ResultRow] = {}
        with self.lock:
            for i in range(0, len(ids), 500):
                batch = ids[i : i + 500]
                marks = ",".join("?" * len(batch))
                for r in self.conn.execute(
                    f"SELECT {_RESULT_COLS} FROM results WHERE task_id IN ({marks})", batch
                ):
                    found[r[0]] = ResultRow(*r)
        return found

    def forget(self, task_id: str) -> bool:
        """Stop serving the outcome of ``task_id`` (its runs stay as history)."""
        with self._write():
            return self.conn.execute("DELETE FROM results WHERE task_id=?", (task_id,)).rowcount > 0

    def discard_damaged(self, row: ResultRow, detail: str) -> bool:
        """Stop serving ``row`` because its result is damaged, and note why.

        Only the row as it was read is dropped (another process may have
        replaced it meanwhile); the note becomes the reason of the next run of
        the task id. True if the row was dropped here.
        """
        with self._write():
            dropped = self.conn.execute(
                "DELETE FROM results WHERE task_id=? AND run_id IS ? AND result_uri IS ? "
                "AND finished=?",
                (row.task_id, row.run_id, row.result_uri, row.finished),
            ).rowcount > 0
            if dropped:
                self.conn.execute(
                    "INSERT OR REPLACE INTO damaged (task_id, detail, found) VALUES (?,?,?)",
                    (row.task_id, detail, time.time()),
                )
        return dropped

    def import_result(
        self, task_id: str, kind: str, function: str, result_uri: str | None,
        codec: str | None, node: str, finished: float | None = None, *,
        status: str = "success", error: str | None = None, data: bytes | None = None,
    ) -> None:
        """Record an outcome computed elsewhere (fetched from a bucket, or sent by the
        channel provider that ran it) as served, naming ``node`` as its producer; ``data``
        is the result's encoded bytes when they are kept inline (small results)."""
        with self._write():
            self.conn.execute(
                f"INSERT OR REPLACE INTO results ({_RESULT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (task_id, None, kind, function, status, result_uri, codec, node,
                 finished or time.time(), error, data),
            )

    # ----------------------------------------------------------------- runs
    def begin(
        self, start: RunStart, ttl: float | None, check_cached: bool
    ) -> tuple[int, leases.Lease | None] | ResultRow | None:
        """Start a run: take the lease (unless ``ttl`` is None) and insert a ``running`` row.

        Returns ``(run_id, lease)`` when this process should run the task, the
        cached :class:`ResultRow` when ``check_cached`` and an outcome appeared,
        or None when another live process holds the lease.
        """
        now = time.time()
        with self._write():
            if check_cached:
                r = self.conn.execute(
                    f"SELECT {_RESULT_COLS} FROM results WHERE task_id=?", (start.task_id,)
                ).fetchone()
                if r:
                    return ResultRow(*r)
            lease = previous = None
            if ttl is not None:
                lease, previous = leases.try_acquire(self.conn, start.task_id, ttl)
                if lease is None:
                    return None
                if previous is not None:
                    self.conn.execute(
                        "UPDATE runs SET status='abandoned', finished=?, error=? "
                        "WHERE lease=? AND status='running'",
                        (now, f"the process holding the lease (pid {previous.pid} on "
                              f"{previous.host}) died or stopped heartbeating", previous.holder),
                    )
            values = [
                json.dumps(getattr(start, f)) if f in _JSON_FIELDS else getattr(start, f)
                for f in _START_FIELDS
            ]
            if start.reason == "miss":  # a miss because the served result was damaged?
                note = self.conn.execute(
                    "SELECT detail FROM damaged WHERE task_id=?", (start.task_id,)
                ).fetchone()
                if note is not None:
                    self.conn.execute("DELETE FROM damaged WHERE task_id=?", (start.task_id,))
                    values[_START_FIELDS.index("reason")] = f"damaged: {note[0]}"
            cur = self.conn.execute(
                f"INSERT INTO runs ({', '.join(_START_FIELDS)}, host, pid, lease, started, status)"
                f" VALUES ({', '.join('?' * len(_START_FIELDS))}, ?, ?, ?, ?, 'running')",
                (*values, leases.HOST, os.getpid(), lease.holder if lease else None, now),
            )
            run_id = cur.lastrowid
        if lease is not None:
            self.heartbeat.add(lease, ttl or leases.DEFAULT_TTL)
        return run_id, lease

    def finish(
        self,
        run_id: int,
        start: RunStart,
        lease: leases.Lease | None,
        status: str,
        children: Iterable[str] = (),
        result_uri: str | None = None,
        codec: str | None = None,
        error: str | None = None,
        serve: bool = True,
        data: bytes | None = None,
    ) -> float:
        """End a run: mark it, serve its outcome (if ``serve``), add edges, drop the lease.
        Returns the time recorded as its end.

        Callers pass ``serve=False`` for failures of pure tasks and queries:
        those are recorded, never served. ``data`` holds a small encoded result
        kept inline instead of in the content store (see :mod:`.cache`).
        """
        now = time.time()
        try:
            with self._write():
                self.conn.execute(
                    "UPDATE runs SET status=?, finished=?, result_uri=?, codec=?, error=? "
                    "WHERE run_id=?",
                    (status, now, result_uri, codec, error, run_id),
                )
                if serve:
                    self.conn.execute(
                        f"INSERT OR REPLACE INTO results ({_RESULT_COLS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (start.task_id, run_id, start.kind, start.function, status, result_uri,
                         codec, start.node, now, error, data),
                    )
                if children:
                    self.conn.executemany(
                        "INSERT OR IGNORE INTO edges (parent, child) VALUES (?,?)",
                        [(start.task_id, c) for c in dict.fromkeys(children)],
                    )
                if lease is not None:
                    leases.release(self.conn, lease)
        except BaseException:
            if lease is not None:  # waiters on this host wait while we live: let go
                self._release_quietly(lease)
            raise
        finally:
            if lease is not None:
                self.heartbeat.remove(lease)
        return now

    def _release_quietly(self, lease: leases.Lease) -> None:
        """Drop our lease after recording the outcome failed (best effort: the
        database may be unwritable, e.g. on a full disk)."""
        try:
            with self._write():
                leases.release(self.conn, lease)
        except (sqlite3.Error, KacheryError):
            pass

    def lease(self, task_id: str) -> leases.Lease | None:
        """The lease row of ``task_id`` (possibly stale), or None."""
        with self.lock:
            return leases.get(self.conn, task_id)

    # ------------------------------------------------------------ provenance
    def runs(
        self, function: str | None = None, task_id: str | None = None, limit: int | None = None,
        status: str | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally of one function or task id."""
        where, params = [], []
        if function is not None:
            where.append("function=?")
            params.append(function)
        if task_id is not None:
            where.append("task_id=?")
            params.append(task_id)
        if status is not None:
            where.append("status=?")
            params.append(status)
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY run_id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.lock:
            return [Run.from_row(r) for r in self.conn.execute(sql, params)]

    def latest_runs(self, function: str | None = None, limit: int = 100) -> list[Run]:
        """The newest run of each task id, newest first."""
        rows = self._select(f"SELECT {_RUN_COLS} FROM runs WHERE run_id IN "
                            "(SELECT MAX(run_id) FROM runs GROUP BY task_id)",
                            function, "run_id", limit)
        return [Run.from_row(r) for r in rows]

    def imported(self, function: str | None = None, limit: int = 100) -> list[ResultRow]:
        """Outcomes computed by other nodes and recorded here (no run of this node behind
        them: imported from a bucket or sent by a channel's provider), newest first."""
        rows = self._select(f"SELECT {_RESULT_COLS} FROM results WHERE run_id IS NULL",
                            function, "finished", limit)
        return [ResultRow(*r) for r in rows]

    def _select(self, sql: str, function: str | None, newest: str,
                limit: int) -> list[tuple]:
        """The rows of ``sql`` (a SELECT with a WHERE clause), of ``function`` only if
        given, at most ``limit``, the highest ``newest`` column first."""
        params: list[Any] = []
        if function is not None:
            sql += " AND function=?"
            params.append(function)
        sql += f" ORDER BY {newest} DESC LIMIT {int(limit)}"
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def imported_count(self) -> int:
        """How many outcomes computed by other nodes are recorded here."""
        with self.lock:
            return self.conn.execute(
                "SELECT COUNT(*) FROM results WHERE run_id IS NULL").fetchone()[0]

    def functions(self) -> list[str]:
        """Every function name that has runs or imported outcomes here."""
        with self.lock:
            return [r[0] for r in self.conn.execute(
                "SELECT function FROM runs UNION SELECT function FROM results")]

    def task_ids_with_prefix(self, prefix: str) -> list[str]:
        """Task ids that start with ``prefix`` (with or without ``sha256:``)."""
        if not prefix.startswith("sha256:"):
            prefix = "sha256:" + prefix
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.lock:
            rows = self.conn.execute(
                "SELECT DISTINCT task_id FROM runs WHERE task_id LIKE ? ESCAPE '\\' "
                "UNION SELECT task_id FROM results WHERE task_id LIKE ? ESCAPE '\\' LIMIT 10",
                (pattern, pattern),
            ).fetchall()
        return sorted(r[0] for r in rows)

    def pure_results_of(self, node: str) -> list[str]:
        """Task ids of the pure results this node computed (to publish them)."""
        with self.lock:
            return [r[0] for r in self.conn.execute(
                "SELECT task_id FROM results WHERE kind='pure' AND status='success' AND node=? "
                "ORDER BY task_id", (node,))]

    def children(self, task_id: str) -> list[str]:
        """Task ids that ``task_id`` called."""
        with self.lock:
            return [r[0] for r in self.conn.execute(
                "SELECT child FROM edges WHERE parent=? ORDER BY child", (task_id,))]

    def parents(self, task_id: str) -> list[str]:
        """Task ids that called ``task_id``."""
        with self.lock:
            return [r[0] for r in self.conn.execute(
                "SELECT parent FROM edges WHERE child=? ORDER BY parent", (task_id,))]

    def note_request(self, task_id: str, requester: str, label: str, channel: str,
                     outcome: str) -> None:
        """Note that node ``requester`` (``label``) asked for ``task_id`` through ``channel``
        and how the request ended (``computed``, ``served the shared result``, ...)."""
        with self._write():
            self.conn.execute(
                "INSERT INTO requests (task_id, requester, label, channel, received, outcome) "
                "VALUES (?,?,?,?,?,?)", (task_id, requester, label, channel, time.time(), outcome))

    def requests_of(self, task_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Who asked this node for ``task_id`` (the latest ``limit`` requests, oldest first)."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT requester, label, channel, received, outcome FROM requests "
                "WHERE task_id=? ORDER BY received DESC LIMIT ?", (task_id, limit)).fetchall()
        return [{"requester": r[0], "label": r[1], "channel": r[2], "received": r[3],
                 "outcome": r[4]} for r in reversed(rows)]

    def function_of(self, task_id: str) -> str | None:
        with self.lock:
            r = self.conn.execute(
                "SELECT function FROM runs WHERE task_id=? UNION "
                "SELECT function FROM results WHERE task_id=? LIMIT 1", (task_id, task_id),
            ).fetchone()
        return r[0] if r else None

    def close(self) -> None:
        with self.lock:
            self.conn.close()




# --------------------------------------------------------------------- why
@dataclass(frozen=True)
class Why:
    """Why the last computation of a function was not served from the cache."""

    function: str
    last: Run | None
    previous: Run | None
    reasons: list[str]

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "last_task_id": self.last.task_id if self.last else None,
            "previous_task_id": self.previous.task_id if self.previous else None,
            "reasons": self.reasons,
        }


def why(records: Records, function: str) -> Why:
    """Explain the last cache miss of ``function`` by comparing id components.

    The last run is compared with the run before it: a changed version, code
    hash or argument (added, removed, or with another value) is named. When
    the same id had run before, the reason is the outcome of that run (it
    failed, the result was forgotten, or recomputation was forced).
    """
    runs = records.runs(function=function, limit=200)
    if not runs:
        return Why(function, None, None, [f"no runs of {function} are recorded on this node"])
    last = runs[0]
    if last.reason in ("forced", "again"):
        what = "recompute" if last.kind == "pure" else "run again"
        return Why(function, last, None, [f"a {what} was requested explicitly"])
    if last.reason == "query":
        return Why(function, last, None, ["queries run on every call; the cache is a fallback"])
    if last.reason.startswith("damaged: "):
        return Why(function, last, None, [
            f"the cached result was damaged, so it was computed again "
            f"({last.reason.removeprefix('damaged: ')})"
        ])
    same = [r for r in runs[1:] if r.task_id == last.task_id]
    if same:
        prev = same[0]
        if prev.status == "success":
            reason = "the same id was computed before, but its result was forgotten"
        elif prev.status == "error":
            reason = f"the same id ran before and failed ({prev.error}); failures are not cached"
        else:
            reason = f"the same id ran before but did not finish (status {prev.effective_status()})"
        return Why(function, last, prev, [reason])
    if len(runs) == 1:
        return Why(function, last, None, [f"first recorded call of {function} on this node"])
    prev = runs[1]
    return Why(function, last, prev, diff_components(prev, last))


def diff_components(old: Run, new: Run) -> list[str]:
    """Human-readable differences between the id components of two runs."""
    reasons = []
    if old.kind != new.kind:
        reasons.append(f"kind changed: {old.kind} -> {new.kind}")
    if old.version != new.version:
        reasons.append(f"version changed: {old.version!r} -> {new.version!r}")
    elif new.version is None and old.code_hash != new.code_hash:
        reasons.append(
            f"code changed: code hash {(old.code_hash or '')[:12]} -> {(new.code_hash or '')[:12]}"
            " (the function or a @pure task it calls was edited)"
        )
    a, b = old.components.get("args", {}), new.components.get("args", {})
    for name in sorted(set(a) | set(b)):
        if name not in a:
            reasons.append(f"argument {name!r} is new")
        elif name not in b:
            reasons.append(f"argument {name!r} was removed")
        elif a[name] != b[name]:
            before = old.args.get(name, "?")
            after = new.args.get(name, "?")
            reasons.append(f"argument {name!r} changed: {before} -> {after}")
    return reasons or ["no component differs: the previous result was forgotten or failed"]
