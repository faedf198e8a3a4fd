"""The Executor contract (kachery_tasks.testing.executors), run against the in-process
executor and a real 2-worker cluster, and what is particular to each."""

from __future__ import annotations

import json
import os
import threading

import pytest
import task_defs

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import ExecutorError, InvalidValueError
from kachery_tasks.runtime import bundles, cache
from kachery_tasks.runtime.executors import DaskExecutor, LocalExecutor, dask_key
from kachery_tasks.storage.layout import result_key
from kachery_tasks.testing.executors import ExecutorContract

pytestmark = pytest.mark.timeout(180)


def _runs(task, *args, status=None):
    return cache.current().records.runs(task_id=task.task_id(*args), status=status)


class TestLocalExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self):
        return LocalExecutor()

    def test_a_submission_encodes_its_arguments_once(self, executor, monkeypatch):
        encodings = []
        real = type(task_defs.add)._encode

        def counting(task, args, kwargs):
            encodings.append(args)
            return real(task, args, kwargs)

        monkeypatch.setattr(task_defs.add, "_encode", counting.__get__(task_defs.add))
        assert executor.submit(task_defs.add, (80, 1), {}).result() == 81  # a miss
        assert executor.submit(task_defs.add, (80, 1), {}).result() == 81  # a hit
        assert len(encodings) == 2


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


class TestDaskExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self, dask_client):
        return DaskExecutor(dask_client)

    def test_the_task_id_is_in_the_dask_key(self, executor):
        fut = executor.submit(task_defs.add, (50, 1), {})
        assert fut._dask.key == f"task_defs.add-{fut.task_id}" == dask_key(
            task_defs.add, fut.task_id, "call")
        fut.result()
        hit = executor.submit(task_defs.add, (50, 1), {})
        assert hit._dask is None  # served before submission

    def test_work_runs_on_the_workers(self, executor, dask_client):
        import os

        executor.submit(task_defs.add, (60, 1), {}).result()
        [run] = _runs(task_defs.add, 60, 1)
        worker_pids = set(dask_client.run(os.getpid).values())
        assert run.pid in worker_pids and run.pid != os.getpid()

    def test_zarr_results_and_arguments_cross_to_the_workers(
        self, executor, dask_client, monkeypatch
    ):
        import os

        import numpy as np
        import zarr

        env = "KACHERY_TASKS_ZARR_THRESHOLD"
        monkeypatch.setenv(env, str(64 * 1024))

        def setenv(value):  # in the workers' own os.environ (a bound method would copy it)
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value

        dask_client.run(setenv, str(64 * 1024))
        try:
            x = np.arange(40_000, dtype=np.float64)  # 320 kB: a zarr result
            z = executor.submit(task_defs.scale, (x, 3.0), {}).result()
            assert isinstance(z, zarr.Array) and z[5] == 15.0
            total = executor.submit(task_defs.array_sum, (z,), {}).result()  # zarr argument
            assert total == float((x * 3.0).sum())
            [run] = _runs(task_defs.array_sum, z)
            assert run.pid in set(dask_client.run(os.getpid).values())
        finally:
            dask_client.run(setenv, None)

    def test_context_manager_with_an_existing_client(self, dask_client):
        with kachery.dask(client=dask_client) as ex:
            assert isinstance(kachery.current_executor(), DaskExecutor)
            futs = task_defs.add.map([1, 2, 3], 1000)
            assert all(f._dask is not None for f in futs)
            assert kachery.gather(futs) == [1001, 1002, 1003]
            assert ex.share_node_dir
        assert isinstance(kachery.current_executor(), LocalExecutor)
        dask_client.submit(int, 1).result()  # the client was not closed

    def test_waiting_for_a_call_the_cluster_cancelled_is_an_executor_error(
            self, executor, dask_client):
        fut = executor.submit(task_defs.slow_square, (71, 5.0), {})
        dask_client.cancel([fut._dask])
        with pytest.raises(ExecutorError, match="CancelledError"):
            fut.wait()  # not a success: the call never ran to its end

    def test_a_bundle_runs_its_calls_on_a_worker_each_recorded_under_its_id(
            self, executor, dask_client):
        calls = [task_defs.add.prepare(90 + i, 1) for i in range(5)]
        bundle = executor.submit_bundle(calls)
        assert bundle._future.key.startswith("task_defs.add-bundle-")  # grouped per function
        assert [o.status for o in bundle.outcomes()] == [bundles.RAN] * 5
        worker_pids = set(dask_client.run(os.getpid).values())
        for i in range(5):
            [run] = _runs(task_defs.add, 90 + i, 1)
            assert run.pid in worker_pids and run.status == "success"
        again = executor.submit_many(task_defs.add, [((90 + i, 1), {}) for i in range(5)])
        assert all(f._dask is None for f in again)  # recorded: served without the cluster
        assert [f.result() for f in again] == [91 + i for i in range(5)]

    def test_a_bundled_call_that_raises_is_described_and_the_others_run(self, executor,
                                                                         tmp_path):
        marker, missing = tmp_path / "there", tmp_path / "missing"
        marker.write_text("")
        calls = [task_defs.fail_until.prepare(str(missing)),
                 task_defs.fail_until.prepare(str(marker))]
        first, second = executor.submit_bundle(calls).outcomes()
        assert (first.status, second.status) == (bundles.FAILED, bundles.RAN)
        error = first.error
        assert (error.type_name, error.message) == ("ValueError", f"no marker {missing}")
        lines = error.traceback.splitlines()  # from the task's own frame
        assert "task_defs.py" in lines[1] and "kachery_tasks" not in error.traceback
        assert lines[-1] == f"ValueError: no marker {missing}"
        assert _runs(task_defs.fail_until, str(missing), status="error")
        assert executor.submit(task_defs.fail_until, (str(marker),), {})._dask is None

    def test_a_bundle_hands_back_the_calls_it_had_no_time_for(self, executor):
        calls = [task_defs.slow_square.prepare(95 + i, 0.3) for i in range(3)]
        outcomes = executor.submit_bundle(calls, budget=0.1).outcomes()
        assert [o.status for o in outcomes] == [bundles.RAN, bundles.UNRUN, bundles.UNRUN]
        assert _runs(task_defs.slow_square, 95, 0.3)
        assert _runs(task_defs.slow_square, 96, 0.3) == []  # never started

    def test_a_bundle_holds_calls_of_one_task_without_futures(self, executor):
        with pytest.raises(InvalidValueError, match="at least one"):
            executor.submit_bundle([])
        with pytest.raises(InvalidValueError, match="one task"):
            executor.submit_bundle([task_defs.add.prepare(1), task_defs.scale.prepare(1)])
        fut = executor.submit(task_defs.add, (97, 1), {})
        with pytest.raises(InvalidValueError, match="futures"):
            executor.submit_bundle([task_defs.add.prepare(fut, 1)])
        assert fut.result() == 98

    def test_a_bundle_the_cluster_cancelled_is_an_executor_error(self, executor, dask_client):
        bundle = executor.submit_bundle([task_defs.slow_square.prepare(99, 5.0)])
        dask_client.cancel([bundle._future])
        with pytest.raises(ExecutorError, match="CancelledError"):
            bundle.outcomes()

    def test_threads_counts_the_workers_threads(self, executor):
        assert executor.threads() == 2  # 2 workers of 1 thread
        assert LocalExecutor().threads() == 1 and not LocalExecutor().runs_bundles

    def test_waiting_for_a_finished_call_asks_nothing_of_the_client(self, executor,
                                                                    monkeypatch):
        fut = executor.submit(task_defs.add, (72, 1), {})
        assert fut._dask.result() == 73  # (the Dask future: ours would keep the value)

        def no_round_trip(*args, **kwargs):
            raise AssertionError("a finished call was looked up through the event loop")

        monkeypatch.setattr(fut._dask.client, "sync", no_round_trip)
        fut.wait()  # (a provider settles each call this way, from its settling threads)

    def test_a_closed_client_is_an_executor_error(self, dask_client):
        import distributed

        client = distributed.Client(dask_client.scheduler.address)
        executor = DaskExecutor(client)
        client.close()
        with pytest.raises(ExecutorError, match="Dask cluster"):
            executor.submit(task_defs.add, (70, 1), {}).result()
        with pytest.raises(ExecutorError, match="Dask cluster"):
            executor.submit_bundle([task_defs.add.prepare(70, 2)])

    def test_an_unreachable_scheduler_is_an_executor_error(self):
        with pytest.raises(ExecutorError, match="cannot reach"), kachery.dask(
            address="tcp://127.0.0.1:9", timeout=2
        ):
            pass

    @pytest.mark.parametrize("address", ["notaurl", "tcp://host", "foo://host:8786"])
    def test_an_address_that_is_not_one_says_what_to_give(self, address, monkeypatch):
        import distributed

        def no_client(*args, **kwargs):  # (a client's event loop may take seconds to start)
            raise AssertionError("a client was started for an address that is not one")

        monkeypatch.setattr(distributed, "Client", no_client)
        with pytest.raises(InvalidValueError) as e, kachery.dask(address=address, timeout=2):
            pass
        assert str(e.value).startswith(f"{address!r} is not the address of a Dask scheduler (")
        assert str(e.value).endswith("give tcp://HOST:PORT, e.g. tcp://scheduler:8786")

    @pytest.mark.parametrize("address, said", [
        ("localhost:8786x", "its port '8786x' is not a number"),
        ("tcp://[::1]:87x", "its port '87x' is not a number"),
        ("tcp://host:", "no port after its ':'")])
    def test_a_port_that_is_not_a_number_is_named(self, address, said, monkeypatch):
        import distributed

        monkeypatch.setattr(distributed, "Client", None)  # found before any client starts
        with pytest.raises(InvalidValueError) as e, kachery.dask(address=address, timeout=2):
            pass
        assert f"({said})" in str(e.value)
        assert "int()" not in str(e.value)


def _set_worker_env(client, name: str, value: str | None) -> None:
    def setenv(name=name, value=value):  # in the workers' own os.environ
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    client.run(setenv)


@pytest.mark.parametrize("shared", ["file", "gs"], indirect=True)
def test_results_computed_on_workers_are_shared_through_the_bucket(dask_client, shared):
    use, bucket = shared
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")  # set by the gs bucket fixture
    _set_worker_env(dask_client, "STORAGE_EMULATOR_HOST", emulator)
    try:
        executor = DaskExecutor(dask_client)
        xs = list(range(300, 306))
        tids = [task_defs.add.task_id(x, 7) for x in xs]
        use("a")
        futs = executor.map(task_defs.add, xs, (7,), {})
        assert all(f._dask is not None for f in futs)  # computed on the workers
        assert kachery.gather(futs) == [x + 7 for x in xs]
        node_a = cache.current().node_id
        docs = [json.loads(bucket.get(result_key(t))) for t in tids]
        assert {d["signer"] for d in docs} == {node_a}  # published by the node that computed
        use("b")
        futs = executor.map(task_defs.add, xs, (7,), {})
        assert all(f._dask is None for f in futs)  # found in the bucket: nothing submitted
        assert [f.result() for f in futs] == [x + 7 for x in xs]
        records = cache.current().records
        assert records.runs(function="task_defs.add") == []  # nothing computed on node b
        assert {records.result(t).node for t in tids} == {node_a}
        assert executor.submit(task_defs.add, (xs[0], 7), {})._dask is None
    finally:
        _set_worker_env(dask_client, "STORAGE_EMULATOR_HOST", None)


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_bucket_lookups_of_a_map_are_one_parallel_request_per_id(
    dask_client, shared, monkeypatch
):
    use, bucket = shared
    real_get = bucket.get
    lookups: list[str] = []
    lock = threading.Lock()
    together = [threading.Barrier(4, timeout=60)]  # 4 lookups must be in flight at once

    def get(key, *args, **kwargs):
        if key.startswith("results/"):
            with lock:
                lookups.append(key)
                wait = len(lookups) % 16 in (1, 2, 3, 4)  # the first 4 of each map of 16
            if wait:
                together[0].wait()  # a sequential lookup would break the barrier
        return real_get(key, *args, **kwargs)

    monkeypatch.setattr(bucket, "get", get)
    monkeypatch.setattr(bucket, "requests_at_once", 8)  # as a bucket across a network says
    executor = DaskExecutor(dask_client)
    xs = list(range(400, 416))
    keys = sorted(result_key(task_defs.add.task_id(x, 9)) for x in xs)
    use("a")
    assert executor.gather(executor.map(task_defs.add, xs, (9,), {})) == [x + 9 for x in xs]
    assert sorted(lookups) == keys  # 16 misses: one request each, before submitting
    lookups.clear()
    together[0] = threading.Barrier(4, timeout=60)
    use("b")
    futs = executor.map(task_defs.add, xs, (9,), {})
    assert all(f._dask is None for f in futs)
    assert sorted(lookups) == keys  # 16 hits: one request each (then the result's blob)


def test_dask_context_starts_and_stops_a_local_cluster():
    pytest.importorskip("distributed")
    with kachery.dask(n_workers=1) as ex:
        cluster = ex.cluster
        assert task_defs.add.submit(80, 1).result() == 81
    assert cluster.status.name in ("closed", "closing")
    assert task_defs.add.is_cached(80, 1)


def test_gather_of_many_futures_shows_a_progress_bar_on_a_terminal(monkeypatch, capfd):
    futures = [LocalExecutor().submit(task_defs.add, (i, 1), {}) for i in range(25)]
    assert {f.status for f in futures} == {"finished"}
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "1")  # as on a terminal
    assert kachery.gather(futures) == [i + 1 for i in range(25)]
    err = capfd.readouterr().err
    assert "tasks" in err and "100.0%" in err
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "0")  # as in a pipe
    kachery.gather(futures)
    assert capfd.readouterr().err == ""
