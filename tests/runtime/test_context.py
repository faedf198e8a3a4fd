"""The context tasks find their executor and the nested-call hook in."""

from __future__ import annotations

import pytest

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import NoProviderError
from kachery_tasks.runtime import cache, context, executors

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


# ------------------------------------------------------------- remote runner
class FakeRunner:
    """A remote runner that computes nothing: it notes the calls and returns a marker."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def run_call(self, call, mode):
        self.calls.append((call.function, call.task_id, mode))
        if self.fail is not None:
            raise self.fail
        if call.kind == "action":
            return kachery.ActionOutcome(call.task_id, call.function, True, True, None, 0.0)
        if call.kind == "query":
            return kachery.QueryResult("remote", False, None, 0.0)
        return "remote"


@kachery.pure
def calls_square(x):
    return square(x) + 1


@kachery.action
def act(x):
    calls.append(("act", x))


@kachery.query
def ask(x):
    calls.append(("ask", x))
    return f"here {x}"


@kachery.pure
def acts_and_asks(x):
    act(x)
    return ask(x)


def test_a_pure_miss_goes_to_the_remote_runner_and_a_hit_does_not():
    assert square(3) == 9  # computed and recorded here
    runner = FakeRunner()
    with context.use_remote_runner(runner):
        assert square(3) == 9
        assert square(4) == "remote"
        assert square.recompute(3) == "remote"
    assert [(f[-6:], mode) for f, _, mode in runner.calls] == [("square", "call"),
                                                               ("square", "force")]
    assert calls == [3]
    assert square(5) == 25  # outside the block: here again


class RunsHere:
    """A remote runner that runs the call here (as ``fallback="local"`` does), noting it."""

    def __init__(self):
        self.calls = []

    def run_call(self, call, mode):
        self.calls.append(call.function)
        c = cache.current()
        return call.task.run_started(c, call.start("miss", c.node_id), call.args,
                                     call.kwargs, mode)


def test_calls_made_inside_a_running_task_are_not_sent():
    runner = RunsHere()
    with context.use_remote_runner(runner):
        assert calls_square(6) == 37
        assert acts_and_asks(8) == "here 8"
    # square(6), act(8) and ask(8) ran here, inside the task that was sent
    assert [f.rsplit(".", 1)[1] for f in runner.calls] == ["calls_square", "acts_and_asks"]
    assert calls == [6, ("act", 8), ("ask", 8)]


def test_actions_and_queries_go_to_the_runner_and_recorded_outcomes_are_served():
    act(1)  # recorded here
    runner = FakeRunner()
    with context.use_remote_runner(runner):
        assert not act(1).ran  # served from the record, not sent
        assert act(2).ran
        assert ask(1) == "remote"
        assert ask.fetch(1).value == "remote"
    assert [c[0][-3:] for c in runner.calls] == ["act", "ask", "ask"]
    assert calls == [("act", 1)]


def test_a_query_whose_runner_fails_serves_the_last_recorded_result():
    assert ask(9) == "here 9"
    with context.use_remote_runner(FakeRunner(fail=NoProviderError("nobody"))):
        with pytest.warns(kachery.StaleResultWarning, match="nobody"):
            assert ask(9) == "here 9"
        assert ask.fetch(9).stale
        with pytest.raises(NoProviderError):
            ask(10)  # nothing recorded to fall back on
