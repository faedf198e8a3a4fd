"""The contract every :class:`~kachery_tasks.runtime.executors.Executor` must pass.

Subclass :class:`ExecutorContract` in a test module, name the subclass
``Test...`` and give it an ``executor`` fixture that returns the executor
under test; pytest then runs every ``test_`` method below against it::

    import pytest
    from kachery_tasks.testing.executors import ExecutorContract

    class TestMyExecutor(ExecutorContract):
        @pytest.fixture
        def executor(self):
            with MyExecutor(workers=2) as ex:
                yield ex

Each test runs in a fresh, empty node directory (the ``node_path`` fixture
sets ``KACHERY_TASKS_DIR``, and unsets ``KACHERY_TASKS_BUCKET`` so that no
shared bucket answers for the executor). The tasks submitted are those of
:mod:`kachery_tasks.testing.contract_tasks`, which the executor's workers must
be able to import (they can wherever kachery-tasks is installed).

The promises checked are those of the docstring of
``kachery_tasks/runtime/executors.py``: the future carries the task id, cached
calls never reach the executor, identical calls in flight run once, failures
raise their own type and are not cached, ``map`` and ``submit_many`` keep
order, ``wait`` ends with the call and ``on_done`` calls back then, futures
may be arguments, nested pure calls are cached and recorded, arrays come back
equal, actions run once and forced recomputation runs again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ..config import ENV_DIR
from ..progress import ENV_FORCE
from ..runtime import cache, compute_task_id, gather
from ..runtime.executors import Executor
from ..storage.buckets import ENV_BUCKET
from . import contract_tasks as t


def _runs(task, *args, status=None):
    return cache.current().records.runs(task_id=task.task_id(*args), status=status)


class ExecutorContract:
    """The behaviour kachery-tasks relies on from an executor; see the module docstring."""

    @pytest.fixture
    def executor(self) -> Executor:
        """The executor under test (override in the subclass)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define an 'executor' fixture returning the executor"
        )

    @pytest.fixture(autouse=True)
    def node_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        """A fresh, empty node directory used as ``$KACHERY_TASKS_DIR``; no bucket, no bars."""
        path = tmp_path / "node"
        monkeypatch.setenv(ENV_DIR, str(path))
        monkeypatch.setenv(ENV_FORCE, "0")
        monkeypatch.delenv(ENV_BUCKET, raising=False)
        return path

    def test_submit_returns_the_result_under_the_task_id(self, executor):
        fut = executor.submit(t.add, (20, 1), {})
        assert fut.task_id == t.add.task_id(20, 1)
        assert fut.result() == 21
        assert [r.status for r in _runs(t.add, 20, 1)] == ["success"]

    def test_cached_calls_never_reach_the_executor(self, executor):
        t.add(30, 1)  # computed in this process
        fut = executor.submit(t.add, (30, 1), {})
        assert fut.done() and fut.result() == 31
        assert len(_runs(t.add, 30, 1)) == 1

    def test_identical_submissions_in_flight_run_once(self, executor):
        a = executor.submit(t.slow_square, (11, 0.5), {})
        b = executor.submit(t.slow_square, (11, 0.5), {})
        assert gather([a, b]) == [121, 121]
        assert [r.status for r in _runs(t.slow_square, 11, 0.5)] == ["success"]

    def test_failures_raise_their_own_type_and_are_not_cached(self, executor, tmp_path):
        marker = str(tmp_path / "marker")
        fut = executor.submit(t.fail_until, (marker,), {})
        with pytest.raises(ValueError, match="no marker"):
            fut.result()
        assert not t.fail_until.is_cached(marker)
        assert [r.status for r in _runs(t.fail_until, marker)] == ["error"]
        open(marker, "w").close()
        assert executor.submit(t.fail_until, (marker,), {}).result() == "ok"

    def test_map_and_gather_keep_order(self, executor):
        futs = executor.map(t.add, range(6), (100,), {})
        assert [f.task_id for f in futs] == [t.add.task_id(i, 100) for i in range(6)]
        assert gather(futs) == [100 + i for i in range(6)]
        assert executor.gather(futs) == [100 + i for i in range(6)]

    def test_futures_as_arguments(self, executor):
        a = executor.submit(t.add, (1, 2), {})
        b = executor.submit(t.add, (a, 10), {})
        assert b.result() == 13
        assert b.task_id == compute_task_id(
            "pure", t.add.name, None, t.add.code_hash, {"a": a, "b": 10})
        assert _runs(t.add, a, 10)[0].inputs == [a.task_id]

    def test_nested_pure_calls_are_cached_and_recorded(self, executor):
        x = np.arange(4.0)
        fut = executor.submit(t.summed_scale, (x, 5.0), {})
        assert fut.result() == 30.0
        assert t.scale.is_cached(x, 5.0)
        parent = t.summed_scale.task_id(x, 5.0)
        assert cache.current().records.children(parent) == [t.scale.task_id(x, 5.0)]

    def test_arrays_come_back_equal(self, executor):
        out = executor.submit(t.make_array, (5,), {}).result()
        assert np.array_equal(out, np.arange(5.0))
        assert np.array_equal(t.make_array(5), out)  # recorded on this node

    def test_actions_run_once_and_forced_recompute_runs(self, executor, tmp_path):
        target = str(tmp_path / "published.txt")
        first = executor.submit(t.publish, (target, "hi"), {}).result()
        second = executor.submit(t.publish, (target, "hi"), {}).result()
        assert first.ran and not second.ran
        assert Path(target).read_text() == "hi\n"
        executor.submit(t.add, (40, 1), {}).result()
        executor.submit(t.add, (40, 1), {}, mode="force").result()
        assert len(_runs(t.add, 40, 1, status="success")) == 2

    def test_submit_many_starts_every_call_in_order(self, executor, tmp_path):
        marker = str(tmp_path / "never")
        futs = executor.submit_many(t.add, [((i, 200), {}) for i in range(4)])
        [failing] = executor.submit_many(t.fail_until, [((marker,), {})])
        assert [f.task_id for f in futs] == [t.add.task_id(i, 200) for i in range(4)]
        assert gather(futs) == [200 + i for i in range(4)]
        with pytest.raises(ValueError, match="no marker"):
            failing.result()

    def test_on_done_calls_back_once_the_call_ended(self, executor, tmp_path):
        import threading

        ended = threading.Semaphore(0)
        seen: list = []

        def note(future):
            seen.append((future, future.done()))
            ended.release()

        fut = executor.submit(t.slow_square, (60, 0.3), {})
        fut.on_done(note)
        failing = executor.submit(t.fail_until, (str(tmp_path / "never"),), {})
        failing.on_done(note)
        assert ended.acquire(timeout=60) and ended.acquire(timeout=60)
        assert {id(f) for f, _ in seen} == {id(fut), id(failing)}
        assert all(done for _, done in seen)
        assert fut.result() == 3600
        late: list = []
        fut.on_done(late.append)  # already ended: called at once
        assert late == [fut]

    def test_wait_ends_with_the_call_and_raises_what_it_raised(self, executor, tmp_path):
        fut = executor.submit(t.add, (50, 2), {})
        assert fut.wait() is None
        assert [r.status for r in _runs(t.add, 50, 2)] == ["success"]  # recorded by then
        assert t.add.is_cached(50, 2)
        failing = executor.submit(t.fail_until, (str(tmp_path / "never"),), {})
        with pytest.raises(ValueError, match="no marker"):
            failing.wait()
