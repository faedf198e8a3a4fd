"""Leases: acquisition, expiry, dead holders, heartbeats and waiting callers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import task_defs

from kachery_tasks import processes
from kachery_tasks.db import transaction
from kachery_tasks.runtime import cache, leases
from kachery_tasks.runtime.records import RunStart

TID = "sha256:" + "1" * 64


def _conn():
    return cache.current().records.conn


def _acquire(ttl=30.0):
    with transaction(_conn()):
        return leases.try_acquire(_conn(), TID, ttl)


def test_one_holder_at_a_time_and_release():
    lease, prev = _acquire()
    assert lease is not None and prev is None
    assert lease.pid == os.getpid() and lease.host == leases.HOST
    again, _ = _acquire()
    assert again is None  # held by a live process (this one)
    with transaction(_conn()):
        assert leases.release(_conn(), lease) is True
        assert leases.release(_conn(), lease) is False
    assert _acquire()[0] is not None


def test_an_expired_lease_of_another_host_is_taken_over():
    with transaction(_conn()):
        _conn().execute(
            "INSERT INTO leases VALUES (?,?,?,?,?,?,?)",
            (TID, "h" * 24, "elsewhere", 12345, None, time.time() - 10, time.time() - 1),
        )
    assert leases.get(_conn(), TID).is_stale()
    new, prev = _acquire()
    assert new is not None and prev.holder == "h" * 24
    # the old holder's release no longer removes the new holder's lease
    with transaction(_conn()):
        assert leases.release(_conn(), prev) is False
    assert leases.get(_conn(), TID).holder == new.holder


def test_an_expired_lease_of_a_live_holder_on_this_host_is_not_taken_over():
    """A holder that stopped renewing but is alive (SIGSTOP, a long call holding
    the GIL) is still working: taking over would run the task twice."""
    lease, _ = _acquire(ttl=0.05)  # held by this process, never renewed
    time.sleep(0.1)
    assert lease.expires < time.time()
    assert not leases.get(_conn(), TID).is_stale()
    assert _acquire()[0] is None
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        other = leases.Lease(TID, "y" * 24, leases.HOST, stopped.pid,
                             processes.pid_start_time(stopped.pid), 0.0, 1.0)
        assert not other.is_stale()  # stopped, expired long ago, and alive
        os.kill(stopped.pid, signal.SIGKILL)
        deadline = time.time() + 30
        while processes._proc_stat(stopped.pid)[0] != "Z" and time.time() < deadline:
            time.sleep(0.01)  # the kill is delivered asynchronously
        assert other.is_stale()  # a zombie until reaped: ended all the same
        stopped.wait()
        assert other.is_stale()
    finally:
        stopped.kill()
        stopped.wait()


def test_a_lease_of_this_process_that_it_no_longer_holds_is_taken_over():
    """E.g. left behind when recording the outcome failed: waiting would be for ever."""
    lease, _ = _acquire()
    assert not leases.get(_conn(), TID).is_stale()
    cache.current().records.heartbeat.remove(lease)
    assert leases.get(_conn(), TID).is_stale()
    assert _acquire()[0] is not None


def test_dead_holder_on_this_host_is_taken_over_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = leases.Lease(TID, "x" * 24, leases.HOST, proc.pid, None, time.time(),
                        time.time() + 3600)
    assert dead.is_stale()
    other_host = leases.Lease(TID, "x" * 24, "elsewhere", proc.pid, None, time.time(),
                              time.time() + 3600)
    assert not other_host.is_stale()  # on another host only expiry counts


def test_heartbeat_extends_held_leases():
    records = cache.current().records
    lease, _ = _acquire(ttl=0.3)
    records.heartbeat.add(lease, 0.3)
    try:
        time.sleep(0.8)
        current = leases.get(_conn(), TID)
        assert current.holder == lease.holder
        assert not current.is_stale()
        assert current.expires > lease.expires + 0.3
    finally:
        records.heartbeat.remove(lease)


def _start(tid=TID):
    return RunStart(tid, "pure", "m.f", None, "c" * 64, {"args": {}}, {}, [], "miss", "n" * 64)


def test_taking_over_marks_the_dead_run_abandoned(monkeypatch):
    records = cache.current().records
    run_id, lease = records.begin(_start(), ttl=0.05, check_cached=True)
    records.heartbeat.remove(lease)  # as if the process had stopped
    time.sleep(0.1)
    got = records.begin(_start(), ttl=30.0, check_cached=True)
    assert isinstance(got, tuple) and got[1].holder != lease.holder
    statuses = {r.run_id: r.status for r in records.runs(task_id=TID)}
    assert statuses[run_id] == "abandoned"
    assert statuses[got[0]] == "running"
    records.finish(got[0], _start(), got[1], "error", error="x", serve=False)


def test_concurrent_callers_in_threads_compute_once():
    before = task_defs.calls["slow_square"]
    out = []

    def call():
        out.append(task_defs.slow_square(7, 0.5))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [49, 49, 49]
    assert task_defs.calls["slow_square"] - before == 1
    tid = task_defs.slow_square.task_id(7, 0.5)
    assert [r.status for r in cache.current().records.runs(task_id=tid)] == ["success"]
    assert cache.current().records.lease(tid) is None


def test_ttl_from_environment(monkeypatch):
    monkeypatch.setenv(leases.ENV_TTL, "2.5")
    assert leases.lease_ttl() == 2.5
    monkeypatch.setenv(leases.ENV_TTL, "nonsense")
    assert leases.lease_ttl() == leases.DEFAULT_TTL


def test_recursive_call_is_refused():
    from kachery_tasks.errors import TaskDefinitionError

    with pytest.raises(TaskDefinitionError, match="calls itself"):
        task_defs.recursive(3)


def _hold_in_child(q, release):
    conn = cache.current().records.conn  # the child's own connection (a new NodeCache)
    with transaction(conn):
        lease, _ = leases.try_acquire(conn, TID, 0.05)
    q.put(lease)
    release.wait(60)


def test_a_lease_taken_in_a_forked_child_is_held_by_that_child():
    """The child records its own start time, not its parent's: its lease is not
    mistaken for one of a process whose pid was reused."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q, release = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(q, release))
    child.start()
    try:
        lease = q.get(timeout=60)
        assert lease.pid == child.pid
        time.sleep(0.1)  # expired, never renewed, and the child is alive
        assert not leases.get(_conn(), TID).is_stale()
        assert _acquire()[0] is None
    finally:
        release.set()
        child.join(60)
    assert leases.get(_conn(), TID).is_stale()  # the child has ended


def test_a_lease_is_let_go_when_recording_the_outcome_fails(monkeypatch):
    """Otherwise waiters on this host would wait as long as this process lives."""
    from kachery_tasks.errors import StorageFullError

    real, failures = leases.release, []

    def release_once_failing(conn, lease):
        if not failures:
            failures.append(lease)
            raise StorageFullError("no space left on the device")
        return real(conn, lease)

    monkeypatch.setattr(leases, "release", release_once_failing)
    with pytest.raises(StorageFullError):
        task_defs.slow_square(11, 0.0)
    tid = task_defs.slow_square.task_id(11, 0.0)
    assert failures and cache.current().records.lease(tid) is None
    assert cache.current().records.result(tid) is None  # the outcome was not recorded
    monkeypatch.setattr(leases, "release", real)
    assert task_defs.slow_square(11, 0.0) == 121


def test_without_a_start_time_an_expired_lease_on_this_host_is_gone():
    """No /proc: a reused pid cannot be told apart, so expiry counts again."""
    parent = os.getppid()  # alive
    assert not leases.Lease(TID, "z" * 24, leases.HOST, parent, None, 0.0,
                            time.time() + 60).is_stale()
    assert leases.Lease(TID, "z" * 24, leases.HOST, parent, None, 0.0, 1.0).is_stale()
