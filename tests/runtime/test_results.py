"""Result codecs: json, npy, pickle, the registry, and the pickle trust rule."""

from __future__ import annotations

import numpy as np
import pytest
import task_defs

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import ResultEncodingError, UntrustedPickleError
from kachery_tasks.runtime import cache, results
from kachery_tasks.storage.local import get_store


@pytest.mark.parametrize(
    "value,codec",
    [
        (None, "json"), (3, "json"), ("text", "json"), ([1, 2.5, None, "a"], "json"),
        ({"a": [1, {"b": True}]}, "json"),
        ((1, 2), "pickle"), ({1: "int key"}, "pickle"), (float("nan"), "pickle"),
        ([float("inf")], "pickle"), (np.float64(1.0), "pickle"), ({"a": (1,)}, "pickle"),
        (np.arange(3), "npy"), (np.zeros((2, 2), dtype="<M8[ns]"), "npy"),
        (np.array([object()]), "pickle"),
    ],
)
def test_codec_choice_and_round_trip(value, codec, tmp_path):
    chosen, data = results.encode(value)
    assert chosen.name == codec
    path = tmp_path / "blob"
    path.write_bytes(bytes(data))
    back = chosen.decode(str(path))
    if isinstance(value, np.ndarray) and value.dtype != object:
        assert back.dtype == value.dtype and np.array_equal(back, value)
        assert not back.flags.writeable
    elif codec == "json" or isinstance(value, tuple | dict):
        assert back == value and type(back) is type(value)


def test_json_round_trip_keeps_key_order(tmp_path):
    value = {"z": 1, "a": 2}
    codec, data = results.encode(value)
    path = tmp_path / "b"
    path.write_bytes(data)
    assert list(codec.decode(str(path))) == ["z", "a"]


def test_large_arrays_are_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MMAP_THRESHOLD", 1024)
    codec, data = results.encode(np.arange(1000.0))
    path = tmp_path / "big.npy"
    path.write_bytes(bytes(data))
    back = codec.decode(str(path))
    assert isinstance(back, np.memmap) and not back.flags.writeable
    assert back[999] == 999.0


def test_unencodable_results_fail_clearly_and_are_not_cached():
    with pytest.raises(ResultEncodingError, match="return a list"):
        task_defs.gen_result(3)
    with pytest.raises(ResultEncodingError, match="cannot be pickled"):
        task_defs.unpicklable(1)
    assert not task_defs.gen_result.is_cached(3)
    runs = cache.current().records.runs(function="task_defs.gen_result")
    assert [r.status for r in runs] == ["error"]
    assert "ResultEncodingError" in runs[0].error


def test_results_are_read_only_arrays():
    a = task_defs.make_array(5)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1.0
    b = task_defs.make_array(5)  # hit from the memo
    assert not b.flags.writeable and np.array_equal(a, b)
    cache.current().clear()
    c = task_defs.make_array(5)  # hit from the store
    assert not c.flags.writeable and np.array_equal(a, c)


def test_mutable_json_results_are_fresh_on_every_hit():
    first = task_defs.total([1, 2])
    assert first == 5
    r1 = task_defs.pair([1], {"k": [2]})
    r1[0].append("mutated")
    r2 = task_defs.pair([1], {"k": [2]})
    assert r2 == ([1], {"k": [2]})
    listed = task_defs.add([1], [2])  # a JSON list
    listed.append(3)
    assert task_defs.add([1], [2]) == [1, 2]


class Celsius:
    def __init__(self, degrees):
        self.degrees = degrees


class CelsiusCodec(results.ResultCodec):
    name, extension = "celsius", "txt"

    def accepts(self, value):
        return isinstance(value, Celsius)

    def encode(self, value):
        return str(value.degrees).encode()

    def decode(self, path):
        with open(path) as f:
            return Celsius(float(f.read()))

    def _loads(self, data):
        return Celsius(float(data))


@kachery.pure(name="test_results.warm")
def warm(x: float):
    return Celsius(x + 1)


def test_registered_codec_is_used_and_recorded():
    kachery.register_codec(CelsiusCodec(), before="npy")
    try:
        assert warm(20.0).degrees == 21.0
        run = cache.current().records.runs(function="test_results.warm")[0]
        assert run.codec == "celsius"
        cache.current().clear()
        assert warm(20.0).degrees == 21.0
    finally:
        results._CODECS[:] = [c for c in results._CODECS if c.name != "celsius"]


def test_unknown_codec_name_is_a_clear_error():
    with pytest.raises(ResultEncodingError, match="no result codec named"):
        results.codec_named("zarr-v9")


def _foreign_pickle_result(task, args, node_id):
    value = (1, "from elsewhere")
    data = results.PickleCodec().encode(value)
    uri = get_store().store_bytes(data)
    tid = task.task_id(*args)
    cache.current().records.import_result(tid, "pure", task.name, uri, "pickle", node_id)
    return tid


def test_pickles_from_other_nodes_need_permission(monkeypatch):
    other = "ab" * 32
    _foreign_pickle_result(task_defs.pair, (7, 8), other)
    before = task_defs.calls["pair"]
    with pytest.raises(UntrustedPickleError, match="allow_pickles_from"):
        task_defs.pair(7, 8)
    assert task_defs.calls["pair"] == before  # refused, not silently recomputed
    monkeypatch.setenv(results.ENV_ALLOW, other)
    assert task_defs.pair(7, 8) == (1, "from elsewhere")


def test_allow_pickles_from_function(monkeypatch):
    other = "cd" * 32
    monkeypatch.setattr(results, "_allowed", set())
    _foreign_pickle_result(task_defs.pair, (9, 9), other)
    with pytest.raises(UntrustedPickleError):
        task_defs.pair(9, 9)
    kachery.allow_pickles_from(other)
    assert task_defs.pair(9, 9) == (1, "from elsewhere")


def test_own_pickles_and_foreign_json_load_freely():
    assert task_defs.pair(1, 2) == (1, 2)
    cache.current().clear()
    assert task_defs.pair(1, 2) == (1, 2)
    uri = get_store().store_bytes(b"[1,2]")
    tid = task_defs.add.task_id(100)
    cache.current().records.import_result(tid, "pure", "task_defs.add", uri, "json", "ef" * 32)
    assert task_defs.add(100) == [1, 2]
