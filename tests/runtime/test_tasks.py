"""Task semantics in-process: pure, query and action."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import task_defs

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import TaskError
from kachery_tasks.nodes import current_node
from kachery_tasks.runtime import cache

HERE = Path(__file__).parent
calls = task_defs.calls


def test_pure_computes_once_then_loads():
    before = calls["add"]
    assert task_defs.add(1, 2) == 3
    assert task_defs.add(1, 2) == 3
    assert task_defs.add(1, b=2) == 3
    assert calls["add"] - before == 1
    cache.current().clear()  # a new process would load from the store
    assert task_defs.add(1, 2) == 3
    assert calls["add"] - before == 1


def test_task_id_and_is_cached_do_not_compute():
    before = calls["add"]
    tid = task_defs.add.task_id(4, 5)
    assert not task_defs.add.is_cached(4, 5)
    assert calls["add"] == before
    task_defs.add(4, 5)
    assert task_defs.add.is_cached(4, 5) and task_defs.add.is_cached(4, b=5)
    assert cache.current().records.result(tid) is not None


def test_recompute_replaces_and_forget_drops():
    before = calls["add"]
    task_defs.add(2, 2)
    old = cache.current().records.result(task_defs.add.task_id(2, 2))
    assert task_defs.add.recompute(2, 2) == 4
    new = cache.current().records.result(task_defs.add.task_id(2, 2))
    assert new.run_id != old.run_id
    assert calls["add"] - before == 2
    assert task_defs.add.forget(2, 2)
    assert not task_defs.add.is_cached(2, 2)
    assert task_defs.add(2, 2) == 4
    assert calls["add"] - before == 3


def test_forget_in_another_process_reaches_this_memo():
    before = calls["add"]
    task_defs.add(6, 6)
    task_defs.add(6, 6)
    assert calls["add"] - before == 1
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import task_defs; " \
           "print(task_defs.add.forget(6, 6))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert task_defs.add(6, 6) == 12
    assert calls["add"] - before == 2


def test_caches_are_per_node_directory(tmp_path, monkeypatch):
    before = calls["add"]
    task_defs.add(7, 7)
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "other-node"))
    assert not task_defs.add.is_cached(7, 7)
    task_defs.add(7, 7)
    assert calls["add"] - before == 2


def test_missing_result_blob_means_recompute():
    before = calls["make_array"]
    task_defs.make_array(1000)  # 8 kB: stored as a blob
    row = cache.current().records.result(task_defs.make_array.task_id(1000))
    assert row.data is None
    store = cache.current().store
    store._remove_blob(store.resolve(row.result_uri))
    cache.current().clear()
    assert not task_defs.make_array.is_cached(1000)
    assert np.array_equal(task_defs.make_array(1000), np.arange(1000.0))
    assert calls["make_array"] - before == 2


def test_small_results_are_inline_and_can_be_materialized():
    from kachery_tasks.errors import ContentNotFoundError

    task_defs.add([1, 2], [3])
    tid = task_defs.add.task_id([1, 2], [3])
    c = cache.current()
    row = c.records.result(tid)
    assert row.data == b"[1,2,3]" and row.codec == "json"
    assert row.result_uri.startswith("sha256://")
    with pytest.raises(ContentNotFoundError):
        current_node().store.load_file(row.result_uri)  # not a blob yet
    assert c.materialize(tid) == row.result_uri
    assert Path(current_node().store.load_file(row.result_uri)).read_bytes() == b"[1,2,3]"
    c.clear()
    assert task_defs.add([1, 2], [3]) == [1, 2, 3]


def test_inline_limit_from_environment(monkeypatch):
    monkeypatch.setenv(cache.ENV_INLINE, "0")
    monkeypatch.setattr(current_node(), "runtime_cache", None)  # a new cache reads it
    task_defs.add(1000, 1)
    row = cache.current().records.result(task_defs.add.task_id(1000, 1))
    assert row.data is None and cache.current().store.has(row.result_uri)


def test_nested_pure_calls_are_cached():
    before = dict(calls)
    x = np.arange(5.0)
    assert task_defs.summed_scale(x, 3.0) == 30.0
    assert task_defs.scale.is_cached(x, 3.0)
    assert task_defs.summed_scale(x, 3.0) == 30.0
    assert calls["summed_scale"] - before.get("summed_scale", 0) == 1
    assert calls["scale"] - before.get("scale", 0) == 1


# ------------------------------------------------------------------ query
def test_query_reruns_and_falls_back_to_a_stale_result(tmp_path):
    source = tmp_path / "service.txt"
    source.write_text("v1")
    before = calls["lookup"]
    assert task_defs.lookup(str(source)) == {"value": "v1"}
    source.write_text("v2")
    assert task_defs.lookup(str(source)) == {"value": "v2"}
    assert calls["lookup"] - before == 2
    source.unlink()  # the service is gone
    with pytest.warns(kachery.StaleResultWarning, match="FileNotFoundError") as caught:
        assert task_defs.lookup(str(source)) == {"value": "v2"}
    assert caught[0].filename == __file__  # pointed at the caller's line
    q = task_defs.lookup.fetch(str(source))
    assert q.stale and q.value == {"value": "v2"} and "FileNotFoundError" in q.error
    source.write_text("v3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = task_defs.lookup.fetch(str(source))
    assert not fresh.stale and fresh.value == {"value": "v3"}


def test_query_without_cached_result_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        task_defs.lookup(str(tmp_path / "never"))
    with pytest.raises(TaskError, match="fetch is for queries"):
        task_defs.add.fetch(1)


# ----------------------------------------------------------------- action
def test_action_runs_at_most_once_per_id(tmp_path):
    target = tmp_path / "out.txt"
    before = calls["publish"]
    first = task_defs.publish(str(target), "hello")
    assert isinstance(first, kachery.ActionOutcome)
    assert first.ok and first.ran and first.error is None
    second = task_defs.publish(str(target), "hello")
    assert second.ok and not second.ran and second.task_id == first.task_id
    assert second.finished == first.finished  # the one run's end, as recorded
    assert target.read_text() == "hello\n"
    assert calls["publish"] - before == 1
    again = kachery.again(task_defs.publish, str(target), "hello")
    assert again.ran and target.read_text() == "hello\nhello\n"
    task_defs.publish.run_again(str(target), "hello")
    assert target.read_text().count("hello") == 3


def test_action_failure_is_recorded_and_not_rerun(tmp_path):
    target = str(tmp_path / "out.txt")
    before = calls["publish"]
    with pytest.raises(RuntimeError, match="refused"):
        task_defs.publish(target, "bad")
    with pytest.raises(TaskError, match=r"RuntimeError: refused.*run_again"):
        task_defs.publish(target, "bad")
    assert calls["publish"] - before == 1
    row = cache.current().records.result(task_defs.publish.task_id(target, "bad"))
    assert row.status == "error"
    with pytest.raises(RuntimeError):
        task_defs.publish.run_again(target, "bad")
    assert calls["publish"] - before == 2
    assert task_defs.publish.forget(target, "bad")
    with pytest.raises(RuntimeError):
        task_defs.publish(target, "bad")
    assert calls["publish"] - before == 3


def test_again_on_pure_recomputes():
    before = calls["add"]
    task_defs.add(8, 8)
    kachery.again(task_defs.add, 8, 8)
    assert calls["add"] - before == 2
    with pytest.raises(Exception, match="needs a task"):
        kachery.again(len, 1)


# ------------------------------------------------------ submit in-process
def test_submit_map_and_gather_in_process():
    fut = task_defs.add.submit(1, 1)
    assert fut.done() and fut.result() == 2
    assert fut.task_id == task_defs.add.task_id(1, 1)
    futs = task_defs.add.map([1, 2, 3], 10)
    assert kachery.gather(futs) == [11, 12, 13]
    bad = task_defs.fail_until.submit("/nonexistent/marker")
    with pytest.raises(ValueError):
        bad.result()


def test_futures_as_arguments_are_encoded_by_reference():
    a = task_defs.add.submit(1, 2)
    b = task_defs.add.submit(a, 10)
    assert b.result() == 13
    expected = kachery.compute_task_id(
        "pure", "task_defs.add", None, task_defs.add.code_hash,
        {"a": a, "b": 10},
    )
    assert b.task_id == expected
    assert b.task_id != task_defs.add.task_id(3, 10)
    run = cache.current().records.runs(task_id=b.task_id)[0]
    assert run.inputs == [a.task_id]


def test_results_read_only_even_on_miss():
    arr = task_defs.scale(np.arange(3.0), 2.0)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr += 1


def test_same_process_different_threads_share_node_state():
    # the state is per node and process: threads share it (a fork would reopen it)
    import threading

    seen = []
    threads = [threading.Thread(target=lambda: seen.append(cache.current())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and all(c is cache.current() for c in seen)
    assert cache.current().pid == os.getpid()


def test_a_huge_int_argument_is_recorded_with_a_summary():
    big = 10**5000  # repr refuses ints of more than 4300 digits
    assert task_defs.pair(big, [big]) == (big, [big])
    assert task_defs.pair(big, [big]) == (big, [big])
    [run] = cache.current().records.runs(task_id=task_defs.pair.task_id(big, [big]))
    assert run.args == {"a": "int of 16610 bits", "b": "list that cannot be shown"}


def test_the_tasks_own_array_is_left_writable():
    kept = kachery.untracked([])  # the test's window into the task, not an input

    @kachery.pure(name="tests.keeps_its_array")
    def make(n):
        a = np.arange(float(n))
        kept.append(a)
        return a

    out = make(5)
    assert not out.flags.writeable  # what the caller gets is read-only
    assert kept[0].flags.writeable  # the function's own array is not changed
