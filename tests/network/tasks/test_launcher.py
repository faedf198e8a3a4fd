"""Launcher: the calls of a provider's jobs started on the executor together."""

from __future__ import annotations

import threading

import pytest

from kachery_tasks.network.tasks.launcher import Launcher
from kachery_tasks.nodes import Node
from kachery_tasks.runtime.executors import Executor, TaskFuture
from tests.network.tasks.remote_tasks import fails, square


class Recording(Executor):
    """Starts nothing: records each submission and answers at once (a test double)."""

    def __init__(self, in_caller: bool = False) -> None:
        self.in_caller = in_caller
        self.batches: list[int] = []
        self.singles: list[str] = []
        self.lock = threading.Lock()

    def _future(self, task, args):
        call = task.prepare(*args)
        if task is fails:
            return TaskFuture(task, call.task_id, error=ValueError(f"failed {args[0]}"))
        return TaskFuture(task, call.task_id, value=None)

    def submit(self, task, args, kwargs, mode="call"):
        with self.lock:
            self.singles.append(threading.current_thread().name)
        return self._future(task, args)

    def submit_many(self, task, calls, mode="call"):
        with self.lock:
            self.batches.append(len(calls))
        return [self._future(task, args) for args, _ in calls]


def _run_in_threads(launcher, calls):
    errors: dict[int, BaseException] = {}
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait()
        try:
            launcher.run(call, "call")
        except BaseException as e:
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, c), name=f"job-{i}")
               for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_calls_arriving_together_start_in_few_submissions(tmp_path):
    executor = Recording()
    launcher = Launcher(executor, Node(tmp_path / "node"), gather_for=0.2)
    try:
        calls = [square.prepare(i) for i in range(12)] + [fails.prepare(7)]
        errors = _run_in_threads(launcher, calls)
    finally:
        launcher.close()
    assert sum(executor.batches) == 13 and len(executor.batches) < 13
    assert executor.singles == []
    assert list(errors) == [12] and str(errors[12]) == "failed 7"  # only that job hears it


def test_an_executor_that_runs_in_the_caller_is_used_by_each_job(tmp_path):
    executor = Recording(in_caller=True)
    launcher = Launcher(executor, Node(tmp_path / "node"))
    try:
        errors = _run_in_threads(launcher, [square.prepare(i) for i in range(5)])
    finally:
        launcher.close()
    assert errors == {} and executor.batches == []
    assert sorted(executor.singles) == [f"job-{i}" for i in range(5)]  # side by side


def test_a_closed_launcher_refuses_new_calls(tmp_path):
    launcher = Launcher(Recording(), Node(tmp_path / "node"))
    launcher.close()
    with pytest.raises(RuntimeError, match="closing"):
        launcher.run(square.prepare(1), "call")


def test_a_call_alone_is_started_without_waiting_for_company(tmp_path):
    executor = Recording()
    launcher = Launcher(executor, Node(tmp_path / "node"), gather_for=120.0)
    try:
        done = threading.Event()
        thread = threading.Thread(target=lambda: (launcher.run(square.prepare(3), "call"),
                                                  done.set()))
        thread.start()
        assert done.wait(20)  # (a guard against the 120 s wait, not a measurement)
        assert executor.batches == [1]
    finally:
        launcher.close()
