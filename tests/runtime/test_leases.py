"""Leases: acquisition, expiry, dead holders, heartbeats and waiting callers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import task_defs

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


def test_expired_lease_is_taken_over():
    lease, _ = _acquire(ttl=0.05)
    time.sleep(0.1)
    assert leases.get(_conn(), TID).is_stale()
    new, prev = _acquire()
    assert new is not None and prev.holder == lease.holder
    # the old holder's release no longer removes the new holder's lease
    with transaction(_conn()):
        assert leases.release(_conn(), lease) is False
    assert leases.get(_conn(), TID).holder == new.holder


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
