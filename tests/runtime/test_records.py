"""Records: what a run records, call edges, failures, forgetting, and ``why``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import task_defs

import kachery_tasks.runtime as kachery
from kachery_tasks.keys import node_keypair
from kachery_tasks.nodes import current_node
from kachery_tasks.runtime import cache
from kachery_tasks.runtime.records import why


def _records():
    return cache.current().records


def test_a_run_records_its_provenance():
    uri = "sha256://" + "ab" * 32 + "?label=raw.dat"
    t0 = time.time()
    assert task_defs.add(np.arange(3.0), b=uri.__len__()) is not None
    task_defs.pair(uri, 5)
    run = _records().runs(function="task_defs.pair")[0]
    assert run.task_id == task_defs.pair.task_id(uri, 5)
    assert run.kind == "pure" and run.function == "task_defs.pair"
    assert run.version is None and run.code_hash == task_defs.pair.code_hash
    assert run.args == {"a": repr(uri), "b": "5"}
    assert run.inputs == [uri]
    assert run.status == "success" and run.error is None
    assert run.result_uri.startswith("sha256://") and run.codec == "pickle"
    assert run.node == node_keypair(current_node().dir).public_hex
    assert t0 <= run.started <= run.finished <= time.time()
    assert set(run.components["args"]) == {"a", "b"}
    served = _records().result(run.task_id)
    assert served.result_uri == run.result_uri and served.run_id == run.run_id
    arr_run = _records().runs(function="task_defs.add")[0]
    assert arr_run.args["a"] == "ndarray(float64, shape=(3,))"


def test_versioned_tasks_record_their_version():
    task_defs.scale(2, 3.0)
    run = _records().runs(function="task_defs.scale")[0]
    assert run.version == "1"


def test_call_edges_are_recorded():
    assert task_defs.total([1, 2, 3]) == 9
    parent = task_defs.total.task_id([1, 2, 3])
    children = _records().children(parent)
    assert sorted(children) == sorted(task_defs.add.task_id(v, 1) for v in (1, 2, 3))
    assert _records().parents(task_defs.add.task_id(2, 1)) == [parent]
    # a child that was a cache hit is an edge too: a new parent over known children
    assert task_defs.total([3, 2, 1]) == 9  # add(v, 1) all served from the cache
    other = task_defs.total.task_id([3, 2, 1])
    assert sorted(_records().children(other)) == sorted(children)


def test_failures_are_recorded_never_served_and_retried(tmp_path):
    marker = str(tmp_path / "marker")
    before = task_defs.calls["fail_until"]
    with pytest.raises(ValueError, match="no marker"):
        task_defs.fail_until(marker)
    assert not task_defs.fail_until.is_cached(marker)
    tid = task_defs.fail_until.task_id(marker)
    assert _records().result(tid) is None
    [run] = _records().runs(task_id=tid)
    assert run.status == "error" and "ValueError: no marker" in run.error
    with pytest.raises(ValueError):
        task_defs.fail_until(marker)  # retried, fails again
    open(marker, "w").close()
    assert task_defs.fail_until(marker) == "ok"
    assert task_defs.fail_until(marker) == "ok"  # now cached
    assert task_defs.calls["fail_until"] - before == 3
    assert [r.status for r in _records().runs(task_id=tid)] == ["success", "error", "error"]


def test_forget_and_results_many():
    task_defs.add(1, 2)
    task_defs.add(3, 4)
    ids = [task_defs.add.task_id(1, 2), task_defs.add.task_id(3, 4), "sha256:" + "0" * 64]
    assert set(_records().results_many(ids)) == set(ids[:2])
    assert task_defs.add.forget(1, 2) is True
    assert task_defs.add.forget(1, 2) is False
    assert set(_records().results_many(ids)) == {ids[1]}
    assert len(_records().runs(task_id=ids[0])) == 1  # history stays


def test_why_names_the_changed_argument():
    task_defs.add(1, 2)
    task_defs.add(1, 3)
    report = why(_records(), "task_defs.add")
    assert report.last.task_id == task_defs.add.task_id(1, 3)
    assert report.previous.task_id == task_defs.add.task_id(1, 2)
    assert report.reasons == ["argument 'b' changed: 2 -> 3"]


def _fn(src):
    ns = {"__name__": "whymod"}
    exec(compile(src, "whymod.py", "exec"), ns)
    return ns["f"]


def test_why_names_code_and_version_changes():
    a = kachery.pure(name="whymod.f")(_fn("def f(x):\n    return x + 1\n"))
    b = kachery.pure(name="whymod.f")(_fn("def f(x):\n    return x + 2\n"))
    a(1)
    b(1)
    [reason] = why(_records(), "whymod.f").reasons
    assert reason.startswith("code changed")
    c = kachery.pure(name="whymod.f", version="7")(_fn("def f(x):\n    return x + 2\n"))
    c(1)
    [reason] = why(_records(), "whymod.f").reasons
    assert reason == "version changed: None -> '7'"


def test_why_explains_forgotten_failed_and_forced():
    assert "no runs" in why(_records(), "task_defs.add").reasons[0]
    task_defs.add(5)
    assert why(_records(), "task_defs.add").reasons[0].startswith("first recorded call")
    task_defs.add.forget(5)
    task_defs.add(5)
    assert "forgotten" in why(_records(), "task_defs.add").reasons[0]
    task_defs.add.recompute(5)
    assert "recompute was requested" in why(_records(), "task_defs.add").reasons[0]


def _garble_pages(path):
    """Overwrite every page but the first (the schema) with junk: a damaged disk."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))


def test_a_damaged_records_database_is_a_one_line_error_saying_what_to_do(run_cli):
    from kachery_tasks.errors import StorageError
    from kachery_tasks.runtime.records import Records

    for i in range(300):
        task_defs.pair("x" * 200, i)
    records = _records()
    records.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _garble_pages(records.path)
    with pytest.raises(StorageError) as e:
        Records(records.path).runs()
    assert f"database {records.path} is damaged" in str(e.value)
    assert "computed again" in str(e.value) and "\n" not in str(e.value)
    r = run_cli("tasks", "ls", "--limit", "1000")
    assert r.returncode == 1
    assert r.stderr.decode().startswith(f"error: database {records.path} is damaged")
    assert r.stderr.decode().count("\n") == 1


def test_discarding_a_damaged_result_drops_only_the_row_as_it_was_read():
    task_defs.pair("discard", 1)
    tid = task_defs.pair.task_id("discard", 1)
    records = _records()
    stale = records.result(tid)
    task_defs.pair.recompute("discard", 1)
    assert records.discard_damaged(stale, "bad bytes") is False  # replaced meanwhile: kept
    assert records.result(tid) is not None
    fresh = records.result(tid)
    assert records.discard_damaged(fresh, "bad bytes") is True
    assert records.result(tid) is None
    cache.current().clear()  # as in the process that found the damage: nothing memoised
    task_defs.pair("discard", 1)  # the next run records why it ran
    assert records.runs(task_id=tid)[0].reason == "damaged: bad bytes"
    task_defs.pair.forget("discard", 1)
    task_defs.pair("discard", 1)  # and only that one
    assert records.runs(task_id=tid)[0].reason == "miss"


def test_a_records_database_from_before_the_requests_table_opens(tmp_path):
    """Node directories made before requests were noted keep working: the table is made."""
    import re
    import sqlite3

    from kachery_tasks.runtime import records as records_mod

    before = re.sub(r"CREATE TABLE IF NOT EXISTS requests \(.*?\);\s*CREATE INDEX IF NOT EXISTS "
                    r"requests_task[^;]*;", "", records_mod.SCHEMA, flags=re.S)
    assert "requests" not in before
    path = tmp_path / "records.db"
    old = sqlite3.connect(path)
    old.executescript(before)
    old.close()
    records = records_mod.Records(path)
    tid = "sha256:" + "0" * 64
    records.note_request(tid, "cd" * 32, "carol", "lab", "computed")
    assert [(r["label"], r["outcome"]) for r in records.requests_of(tid)] == [
        ("carol", "computed")]
    records.close()


def test_a_records_write_waits_out_another_process_writing(tmp_path):
    import sqlite3
    import threading

    from kachery_tasks.runtime.records import Records

    records = Records(tmp_path / "records.db")
    other = sqlite3.connect(tmp_path / "records.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # as another process's transaction would
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    records.import_result("sha1:" + "ab" * 20, "pure", "m.f", None, "json", "cd" * 32,
                          data=b"1")
    assert records.result("sha1:" + "ab" * 20).data == b"1"
