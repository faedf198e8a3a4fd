"""The context tasks find their executor and the nested-call hook in."""

from __future__ import annotations

import pytest

import kachery_tasks.runtime as kachery
from kachery_tasks.runtime import context, executors

calls: list[int] = kachery.untracked([])


@pytest.fixture(autouse=True)
def _fresh_calls():
    calls.clear()


@kachery.pure
def square(x):
    calls.append(x)
    return x * x


class Recorder:
    """An executor that notes what it is given."""

    def __init__(self):
        self.seen = []

    def submit(self, task, args, kwargs, mode="call"):
        self.seen.append(("submit", task, args, kwargs))
        return "submitted"

    def map(self, task, items, args=(), kwargs=None):
        self.seen.append(("map", task, list(items), args, kwargs))
        return ["mapped"]


def test_submit_and_map_go_to_the_current_executor():
    rec = Recorder()
    with kachery.use_executor(rec) as ex:
        assert ex is rec and context.current_executor() is rec
        assert square.submit(3) == "submitted"
        assert square.map([1, 2], 5, k=1) == ["mapped"]
    assert rec.seen == [("submit", square, (3,), {}), ("map", square, [1, 2], (5,), {"k": 1})]
    assert calls == []  # nothing ran here


def test_outside_every_block_the_local_executor_runs_at_once():
    assert kachery.current_executor() is executors.LOCAL is context.current_executor()
    assert square.submit(4).result() == 16 and calls[-1] == 4
    assert executors.current_executor is context.current_executor  # one registry


def test_a_miss_inside_a_worker_task_goes_through_the_nested_runner(monkeypatch):
    sent = []

    def runner(task, start, args, kwargs, mode):
        sent.append((task, start.task_id, start.reason, args, mode))
        return "from the cluster"

    monkeypatch.setattr(context, "_nested", lambda: runner)
    assert square(7) == "from the cluster"
    assert sent == [(square, square.task_id(7), "miss", (7,), "call")]
    assert calls == []
    monkeypatch.setattr(context, "_nested", lambda: None)  # not on a worker: runs here
    assert square(7) == 49 and calls == [7]


def test_executors_register_their_nested_runner():
    assert context._nested is executors.nested_runner
    assert context.nested_runner() is None  # not inside a task on a Dask worker
