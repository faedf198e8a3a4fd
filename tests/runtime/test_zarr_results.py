"""Large array results are stored as zarr and come back lazily."""

import numpy as np
import task_defs
import zarr

from kachery_tasks.nodes import current_node
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


# ------------------------------------------------------- zarr arrays as arguments
def _never_read(monkeypatch):
    """Make any read of a stored zarr value fail (index and chunks alike)."""
    from kachery_tasks.storage.zarr_store import ContentStore

    def refuse(self, key, byte_range):
        raise AssertionError(f"read {key}")

    monkeypatch.setattr(ContentStore, "_read", refuse)


def test_a_stored_zarr_argument_hashes_by_its_uri_without_reading(monkeypatch):
    import pytest

    from kachery_tasks.errors import UnsupportedArgumentError
    from kachery_tasks.runtime.encoders import encode
    from kachery_tasks.uris import parse_uri
    from kachery_tasks.zarr_arrays import store_zarr

    a = np.arange(10_000, dtype="f4").reshape(100, 100)
    uri = store_zarr(a, chunks=(10, 10))
    other = store_zarr(a + 1, chunks=(10, 10))
    z1, z2, z3 = load_zarr(uri), load_zarr(uri), load_zarr(other)
    _never_read(monkeypatch)
    assert encode(z1) == b"z" + parse_uri(uri).hex.encode() + encode("")
    assert task_defs.scale.task_id(z1) == task_defs.scale.task_id(z2)  # another opening
    assert task_defs.scale.task_id(z1) != task_defs.scale.task_id(z3)
    assert task_defs.scale.task_id(z1) != task_defs.scale.task_id(uri)  # not the URI string
    assert task_defs.scale.task_id(z1) != task_defs.scale.task_id(a)  # nor the numpy data
    # arrays whose bytes no URI names are refused, with the way out
    plain = zarr.create_array(zarr.storage.MemoryStore(), data=a, chunks=(10, 10))
    with pytest.raises(UnsupportedArgumentError, match="store_zarr"):
        task_defs.scale.task_id(plain)


def test_a_task_on_a_stored_zarr_argument_is_cached_across_openings():
    from kachery_tasks.zarr_arrays import store_zarr

    a = np.arange(1000, dtype="f8")
    uri = store_zarr(a, chunks=(100,))
    before = task_defs.calls["array_sum"]
    assert task_defs.array_sum(load_zarr(uri)) == a.sum()
    cache_mod.current().clear()  # as in a fresh process: from the records, not the memo
    assert task_defs.array_sum(load_zarr(uri)) == a.sum()  # a new opening: a hit
    assert task_defs.calls["array_sum"] == before + 1


def test_returning_a_stored_zarr_array_stores_nothing_new(monkeypatch):
    from kachery_tasks.zarr_arrays import store_zarr

    a = np.arange(1000, dtype="f8")
    uri = store_zarr(a, chunks=(100,))
    z = load_zarr(uri)
    _never_read(monkeypatch)
    assert store_zarr(z) == uri  # already stored: no chunk is read or copied


def test_a_zarr_result_missing_chunks_is_computed_again(monkeypatch):
    from kachery_tasks.storage.zarr_store import ContentStore

    monkeypatch.setenv("KACHERY_TASKS_ZARR_THRESHOLD", str(64 * 1024))
    x = np.arange(50_000, dtype=np.float64)
    before = task_defs.calls["scale"]
    task_defs.scale(x, 7.0)
    row = cache_mod.current().records.result(task_defs.scale.task_id(x, 7.0))
    chunk = next(h for k, h in ContentStore.from_uri(row.result_uri, current_node()).blobs().items()
                 if k.startswith("c/"))
    current_node().store._remove_blob(chunk)  # as gc would, leaving the index
    cache_mod.current().clear()
    again = task_defs.scale(x, 7.0)
    assert task_defs.calls["scale"] == before + 2  # computed again, not served broken
    np.testing.assert_array_equal(again[:], x * 7.0)
