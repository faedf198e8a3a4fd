"""Large array results are stored as zarr and come back lazily."""

import numpy as np
import task_defs
import zarr

from kachery_tasks.runtime import cache as cache_mod
from kachery_tasks.zarr_arrays import load_zarr


def test_large_array_result_is_zarr(monkeypatch):
    monkeypatch.setenv("KACHERY_TASKS_ZARR_THRESHOLD", str(64 * 1024))
    x = np.arange(40_000, dtype=np.float64)  # 320 kB: above the lowered threshold
    before = task_defs.calls["scale"]
    y = task_defs.scale(x, 2.0)
    assert isinstance(y, zarr.Array)
    np.testing.assert_array_equal(y[:], x * 2.0)
    tid = task_defs.scale.task_id(x, 2.0)
    row = cache_mod.current().records.result(tid)
    assert row.codec == "zarr"
    np.testing.assert_array_equal(load_zarr(row.result_uri)[100:200], x[100:200] * 2.0)
    cache_mod.current().clear()  # a fresh process: decoded from the store, not the memo
    again = task_defs.scale(x, 2.0)
    assert task_defs.calls["scale"] == before + 1
    assert isinstance(again, zarr.Array) and again[39_999] == 79_998.0


def test_small_arrays_stay_npy():
    y = task_defs.scale(np.arange(10.0), 2.0)
    assert isinstance(y, np.ndarray) and not y.flags.writeable
