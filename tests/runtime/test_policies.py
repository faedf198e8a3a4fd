"""Policies: one object per kind of task holds what differs between the kinds."""

from __future__ import annotations

import warnings

import pytest

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import TaskError
from kachery_tasks.runtime import cache
from kachery_tasks.runtime.executors import LocalExecutor, dask_key
from kachery_tasks.runtime.policies import (
    ACTION,
    PURE,
    QUERY,
    ActionOutcome,
    ActionPolicy,
    PurePolicy,
    QueryPolicy,
    QueryResult,
    StaleResultWarning,
)

calls: list[str] = kachery.untracked([])


@kachery.pure
def double(x):
    calls.append("double")
    return 2 * x


@kachery.query
def read(path: str):
    calls.append("read")
    with open(path) as f:
        return f.read()


@kachery.action
def touch(path: str):
    calls.append("touch")
    if path.endswith("fail"):
        raise OSError("refused")
    open(path, "a").close()


def _runs(task, *args):
    return cache.current().records.runs(task_id=task.task_id(*args))


def test_each_kind_has_its_policy():
    assert isinstance(double.policy, PurePolicy) and double.policy.kind == "pure"
    assert isinstance(read.policy, QueryPolicy) and read.policy.kind == "query"
    assert isinstance(touch.policy, ActionPolicy) and touch.policy.kind == "action"


@pytest.mark.parametrize("question,answers", [
    ("deterministic", (True, False, False)),
    ("served_before_submission", (True, False, True)),
    ("lease", (True, False, True)),
    ("serves_failures", (False, False, True)),
    ("keeps_value", (True, True, False)),
    ("stale_fallback", (False, True, False)),
    ("random_key", (False, True, False)),
])
def test_what_each_kind_answers(question, answers):
    assert tuple(getattr(p, question) for p in (PURE, QUERY, ACTION)) == answers


@pytest.mark.parametrize("policy,reasons", [
    (PURE, ("miss", "forced", "forced")),
    (QUERY, ("query", "query", "query")),
    (ACTION, ("miss", "again", "again")),
])
def test_reasons_and_keys_per_mode(policy, reasons):
    modes = ("call", "force", "again")
    assert tuple(policy.reason(m) for m in modes) == reasons
    assert [policy.check_cached(m) for m in modes] == [policy.served_before_submission,
                                                        False, False]
    assert [policy.unique_key(m) for m in modes] == [policy.random_key, True, True]


def test_the_records_give_the_policys_reasons(tmp_path):
    double(1)
    double.recompute(1)
    assert [r.reason for r in _runs(double, 1)] == ["forced", "miss"]
    path = str(tmp_path / "q")
    open(path, "w").close()
    read(path)
    assert [r.reason for r in _runs(read, path)] == ["query"]
    target = str(tmp_path / "t")
    touch(target)
    touch.run_again(target)
    assert [r.reason for r in _runs(touch, target)] == ["again", "miss"]


def test_a_task_follows_its_policy_object():
    class Tagged(PurePolicy):
        random_key = True

        def reason(self, mode):
            return "tagged-" + super().reason(mode)

    task = kachery.pure(name="test_policies.tagged")(double.func)
    task.policy = Tagged()
    assert task(21) == 42
    assert [r.reason for r in _runs(task, 21)] == ["tagged-miss"]
    assert LocalExecutor().submit(task, (22,), {}).result() == 44
    assert [r.reason for r in _runs(task, 22)] == ["tagged-miss"]
    tid = task.task_id(1)
    assert dask_key(task, tid, "call").startswith(f"{task.name}-{tid}-")
    assert dask_key(double, tid, "call") == f"{double.name}-{tid}"


def test_the_action_policy_serves_recorded_outcomes(tmp_path):
    target = str(tmp_path / "t")
    first = touch(target)
    assert isinstance(first, ActionOutcome) and first.ran and first.ok
    row = cache.current().records.result(touch.task_id(target))
    served = ACTION.served(touch, row, lambda r: pytest.fail("an action has no value to load"))
    assert served == ActionOutcome(first.task_id, touch.name, True, False, None, row.finished)
    with pytest.raises(OSError):
        touch(target + "-fail")
    failed = cache.current().records.result(touch.task_id(target + "-fail"))
    with pytest.raises(TaskError, match=r"failed at .*OSError: refused.*run_again"):
        ACTION.served(touch, failed, lambda r: None)
    with pytest.raises(TaskError, match="OSError: refused"):  # served, not run again
        touch(target + "-fail")
    future = LocalExecutor().submit(touch, (target + "-fail",), {})
    with pytest.raises(TaskError, match="OSError: refused"):
        future.result()


def test_pure_and_query_policies_serve_the_loaded_value():
    assert PURE.served(double, "row", lambda r: ("loaded", r)) == ("loaded", "row")
    ran = QUERY.ran(read, "id", 5, 1767000000.5)
    assert ran.value == 5 and not ran.stale and ran.computed == 1767000000.5


def test_a_stale_query_warns_only_when_called():
    stale = QueryResult("old", True, "OSError: gone", 0.0)
    with pytest.warns(StaleResultWarning, match="test_policies.read could not run"):
        assert QUERY.returned(read, stale, "call", stacklevel=1) == "old"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert QUERY.returned(read, stale, "force", stacklevel=1) == "old"
        assert QUERY.returned(read, QueryResult("new", False, None, 1.0), "call", 1) == "new"
        assert QUERY.value(stale) == "old"


class InlineClient:
    """A ``distributed.Client`` stand-in that runs each submitted call at once, here."""

    def map(self, fn, *iterables, key, pure):
        return [_Done(fn(*args)) for args in zip(*iterables, strict=True)]

    def gather(self, futures, errors="raise"):
        return [f.value for f in futures]


class _Done:
    status = "finished"

    def __init__(self, value):
        self.value = value

    def done(self):
        return True


def test_modes_mean_the_same_on_dask_as_in_process(tmp_path):
    dask_ex = kachery.DaskExecutor(InlineClient())
    target = str(tmp_path / "t")
    assert dask_ex.submit(touch, (target,), {}).result().ran
    assert not dask_ex.submit(touch, (target,), {}).result().ran  # served before submission
    forced = dask_ex.submit(touch, (target,), {}, mode="force").result()
    assert forced.ran  # runs again, as touch.recompute(target) does
    assert [r.reason for r in _runs(touch, target)] == ["again", "miss"]
    assert dask_ex.submit(double, (5,), {}, mode="again").result() == 10
    assert [r.reason for r in _runs(double, 5)] == ["forced"]
