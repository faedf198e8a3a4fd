"""Result codecs: json, npy, pickle, the registry, and the pickle trust rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import task_defs
from hypothesis import given, settings
from hypothesis import strategies as st

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import ResultEncodingError, UntrustedPickleError
from kachery_tasks.nodes import current_node
from kachery_tasks.runtime import cache, results


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
    uri = current_node().store.store_bytes(data)
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
    uri = current_node().store.store_bytes(b"[1,2]")
    tid = task_defs.add.task_id(100)
    cache.current().records.import_result(tid, "pure", "task_defs.add", uri, "json", "ef" * 32)
    assert task_defs.add(100) == [1, 2]


# ------------------------------------------------------------ damaged results
def _blob_of(task, *args) -> str:
    row = cache.current().records.result(task.task_id(*args))
    assert row is not None and row.data is None, "expected a result stored as a blob"
    return current_node().store.load_file(row.result_uri)


def _overwrite(path: str, data: bytes) -> None:
    import os

    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)


def _assert_recomputed_because_damaged(task, args, counter, before, what):
    """The call was computed again, recorded why, and serves a sound result again."""
    assert task_defs.calls[counter] == before + 1
    tid = task.task_id(*args)
    runs = cache.current().records.runs(task_id=tid)
    assert [r.status for r in runs] == ["success", "success"]
    assert runs[0].reason.startswith("damaged: ") and what in runs[0].reason, runs[0].reason
    assert runs[1].reason == "miss"
    cache.current().clear()  # a new process: loaded from the store again, and sound
    task(*args)
    assert task_defs.calls[counter] == before + 1
    assert current_node().store.verify().corrupt == []


@pytest.mark.parametrize("damage", ["edit", "truncate"])
def test_a_damaged_json_blob_is_a_miss_and_is_computed_again(damage):
    value = task_defs.add(list(range(2000)), [])  # a JSON list too big to keep inline
    path = _blob_of(task_defs.add, list(range(2000)), [])
    data = Path(path).read_bytes()
    _overwrite(path, data.replace(b"1234", b"9999") if damage == "edit" else data[:100])
    cache.current().clear()  # as a new process: the first load of the result
    before = task_defs.calls["add"]
    assert task_defs.add(list(range(2000)), []) == value  # not [..., 9999, ...], no JSONDecodeError
    _assert_recomputed_because_damaged(
        task_defs.add, (list(range(2000)), []), "add", before, "no longer matches its hash"
    )


def test_damaged_npy_and_pickle_blobs_are_computed_again():
    arr = task_defs.make_array(5000)
    pair = task_defs.pair("x" * 5000, 1)
    for task, args, counter in ((task_defs.make_array, (5000,), "make_array"),
                                (task_defs.pair, ("x" * 5000, 1), "pair")):
        path = _blob_of(task, *args)
        data = bytearray(Path(path).read_bytes())
        data[-10] ^= 0xFF  # one flipped byte near the end
        _overwrite(path, bytes(data))
        cache.current().clear()
        before = task_defs.calls[counter]
        got = task(*args)
        assert np.array_equal(got, arr) if counter == "make_array" else got == pair
        _assert_recomputed_because_damaged(task, args, counter, before, "its hash")


def test_a_damaged_inline_result_is_computed_again():
    assert task_defs.add(40, 2) == 42
    tid = task_defs.add.task_id(40, 2)
    records = cache.current().records
    assert records.result(tid).data == b"42"
    records.conn.execute("UPDATE results SET data = ? WHERE task_id = ?", (b"43", tid))
    cache.current().clear()
    before = task_defs.calls["add"]
    assert task_defs.add(40, 2) == 42
    _assert_recomputed_because_damaged(task_defs.add, (40, 2), "add", before, "records database")


def test_a_truncated_memory_mapped_array_is_computed_again(monkeypatch):
    """Memory-mapped results are not re-hashed on load (that would read them whole),
    but one that no longer decodes is a miss too, and its bad blob is removed."""
    monkeypatch.setattr(results, "MMAP_THRESHOLD", 1024)
    arr = task_defs.make_array(3000)
    path = _blob_of(task_defs.make_array, 3000)
    _overwrite(path, Path(path).read_bytes()[:5000])
    cache.current().clear()
    before = task_defs.calls["make_array"]
    assert np.array_equal(task_defs.make_array(3000), arr)
    _assert_recomputed_because_damaged(
        task_defs.make_array, (3000,), "make_array", before, "could not be decoded"
    )


def test_a_sound_result_that_no_longer_decodes_is_computed_again():
    class Picky(CelsiusCodec):
        name = "picky"
        fail = False

        def decode(self, path):
            if Picky.fail:
                raise ValueError("format changed")
            return super().decode(path)

    kachery.register_codec(Picky(), before="npy")
    try:
        assert warm(1.0).degrees == 2.0
        Picky.fail = True
        cache.current().clear()
        assert warm(1.0).degrees == 2.0  # computed again, not a ValueError
        runs = cache.current().records.runs(function="test_results.warm")
        assert runs[0].reason.startswith("damaged: the stored result could not be decoded")
        assert "ValueError: format changed" in runs[0].reason
    finally:
        results._CODECS[:] = [c for c in results._CODECS if c.name != "picky"]


def test_a_damaged_result_shows_in_tasks_show_and_why(run_cli):
    task_defs.add(list(range(2000)), [7])
    path = _blob_of(task_defs.add, list(range(2000)), [7])
    _overwrite(path, b"[]")
    cache.current().clear()
    task_defs.add(list(range(2000)), [7])
    tid = task_defs.add.task_id(list(range(2000)), [7])
    show = run_cli("tasks", "show", tid)
    assert show.returncode == 0, show.stderr
    assert "[damaged: the stored result (blob) no longer matches its hash" in show.stdout.decode()
    why = run_cli("tasks", "why", "task_defs.add")
    assert "the cached result was damaged, so it was computed again" in why.stdout.decode()


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from(["<f8", ">i4", "<u2", "?", "<c16", "<M8[ns]", "<U3", "S2"]),
    shape=st.lists(st.integers(0, 4), max_size=3),
    fortran=st.booleans(),
    cut=st.integers(1, 64),
)
def test_npy_results_decode_from_memory_as_read_only_views(dtype, shape, fortran, cut):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    arr = np.frombuffer(bytes(i % 251 for i in range(n)), dtype=dtype).reshape(shape)
    if fortran:
        arr = np.asfortranarray(arr)
    codec, data = results.encode(arr)
    assert codec.name == "npy"
    back = codec.decode_bytes(bytes(data))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()  # the same values, bit for bit
    assert back.flags.f_contiguous == arr.flags.f_contiguous
    assert not back.flags.writeable
    if arr.nbytes:  # a cut-off blob is refused, never read past its end
        with pytest.raises(ValueError):
            codec.decode_bytes(bytes(data)[: max(0, len(data) - cut)])


def test_an_int_too_long_for_json_text_is_stored_as_a_pickle():
    import kachery_tasks as kachery

    @kachery.pure(name="tests.results.power_of_ten")
    def power_of_ten(n):
        return 10**n

    assert power_of_ten(5000) == 10**5000
    assert power_of_ten(5000) == 10**5000  # a hit
    assert power_of_ten(5) == 10**5
