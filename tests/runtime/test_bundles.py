"""Bundles (kachery_tasks/runtime/bundles.py): the loop a worker runs and what comes back.

A real cluster runs bundles in tests/runtime/test_executors.py; here the loop
and the reading of outcomes, on their own.
"""

from __future__ import annotations

import pickle
import time

import pytest

from kachery_tasks.errors import ExecutorError
from kachery_tasks.runtime.bundles import (
    FAILED,
    RAN,
    UNRUN,
    Bundle,
    CallFailed,
    Outcome,
    run_calls,
)


def _statuses(outcomes):
    return [o.status for o in outcomes]


def test_the_calls_run_in_order_and_each_says_it_ran():
    seen = []
    assert run_calls(seen.append, 4, budget=10.0) == [Outcome(RAN)] * 4
    assert seen == [0, 1, 2, 3]


def test_no_call_starts_once_the_budget_is_spent_but_the_first_always_runs():
    seen = []

    def slow(i):
        seen.append(i)
        time.sleep(0.05)

    assert _statuses(run_calls(slow, 3, budget=0.01)) == [RAN, UNRUN, UNRUN]
    assert seen == [0]
    assert _statuses(run_calls(seen.append, 2, budget=0.0))[0] == RAN


def _raises(i):
    if i == 1:
        raise ValueError(f"bad {i}")


def test_a_call_that_raises_is_described_and_the_next_ones_run():
    out = run_calls(_raises, 3, budget=10.0)
    assert _statuses(out) == [RAN, FAILED, RAN] and out[0].error is None
    error = out[1].error
    assert (error.type_name, error.message) == ("ValueError", "bad 1")
    assert "in _raises" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: bad 1")


def test_a_call_ending_with_system_exit_fails_alone_and_an_interrupt_ends_the_bundle():
    def exits(i):
        if i == 0:
            raise SystemExit(3)

    out = run_calls(exits, 2, budget=10.0)
    assert _statuses(out) == [FAILED, RAN]
    assert (out[0].error.type_name, out[0].error.message) == ("SystemExit", "3")

    def interrupted(i):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_calls(interrupted, 2, budget=10.0)


def test_outcomes_survive_pickling_as_a_worker_sends_them():
    out = pickle.loads(pickle.dumps(run_calls(_raises, 2, budget=10.0)))
    assert _statuses(out) == [RAN, FAILED]
    e = out[1].error
    assert (type(e), e.type_name, e.message, str(e)) == (CallFailed, "ValueError", "bad 1",
                                                         "bad 1")
    assert "in _raises" in e.traceback


def test_a_call_fits_a_bundle_when_its_arguments_are_small_in_memory():
    import numpy as np

    from kachery_tasks.runtime.bundles import ARGUMENTS_MAX, fits

    class _Call:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    assert fits(_Call(3, "x", scale=2.0))
    assert fits(_Call(np.zeros(ARGUMENTS_MAX // 8 - 64)))
    assert not fits(_Call(np.zeros(ARGUMENTS_MAX // 8 + 64)))
    assert not fits(_Call(1, data=np.zeros(ARGUMENTS_MAX // 8 + 64)))


class _Future:
    """Stands in for a cluster's future (the real one: tests/runtime/test_executors.py)."""

    def __init__(self, result=None, error=None, status="finished"):
        self._result, self._error, self.status = result, error, status

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result


def _bundle(future, n=2):
    return Bundle(future, [f"id{i}" for i in range(n)],
                  lambda e: ExecutorError(f"the cluster failed: {e}"))


def test_outcomes_are_read_in_order():
    sent = [Outcome(RAN), Outcome(FAILED, CallFailed("ValueError", "no", "tb")),
            Outcome(UNRUN)]
    assert _bundle(_Future(sent), 3).outcomes() == sent


@pytest.mark.parametrize("raw", [[Outcome(RAN)], [Outcome(RAN), (RAN,)], "ran", None])
def test_outcomes_that_are_not_one_per_call_are_an_executor_error(raw):
    with pytest.raises(ExecutorError):
        _bundle(_Future(raw)).outcomes()


def test_a_bundle_that_raised_raises_the_same_and_a_cluster_failure_is_an_executor_error():
    own = OSError("the node directory is gone")
    with pytest.raises(OSError) as e:
        _bundle(_Future(error=own, status="error")).outcomes()
    assert e.value is own
    with pytest.raises(ExecutorError, match="the cluster failed: lost"):
        _bundle(_Future(error=RuntimeError("lost"), status="lost")).outcomes()
