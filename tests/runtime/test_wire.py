"""Arguments on the wire: what is rebuilt has the same task-id encoding as what was sent."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kachery_tasks.runtime import encoders, wire
from kachery_tasks.runtime.wire import WireError


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: tuple


def through_json(v, **kw):
    enc = wire.encode(v, **kw)
    return enc, json.loads(json.dumps(enc.value, allow_nan=False))


scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**60, max_value=2**200)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=40)
)
hashables = st.recursive(scalars, lambda i: st.tuples(i, i) | st.frozensets(i, max_size=3),
                         max_leaves=6)
values = st.recursive(
    scalars | hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=3, max_side=4)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner, max_size=4) | st.sets(hashables, max_size=4)
        | st.builds(Point, st.floats(), st.tuples(inner))
    ),
    max_leaves=15,
)


@settings(max_examples=300)
@given(values)
def test_a_value_rebuilt_from_json_has_the_same_task_id_encoding(v):
    _, obj = through_json(v)
    back = wire.decode(obj)
    assert encoders.encode(back) == encoders.encode(v)


@given(st.lists(st.integers(-2**53 + 1, 2**53 - 1) | st.text(), max_size=5))
def test_plain_json_values_travel_as_themselves(v):
    enc, obj = through_json(v)
    assert obj == v and enc.content == []


def test_types_survive_that_json_would_merge():
    v = {(1, 2): [1.0, 1, True, None, b"x", frozenset({3})], 5: {7}, "nan": float("nan")}
    back = wire.decode(through_json(v)[1])
    assert type(next(iter(back))) is tuple
    assert [type(x) for x in back[(1, 2)]] == [float, int, bool, type(None), bytes, frozenset]
    assert back[5] == {7} and back["nan"] != back["nan"]


def test_numpy_scalars_and_structured_arrays_keep_their_dtype():
    s = np.float32(1.5)
    back = wire.decode(through_json(s)[1])
    assert type(back) is np.float32 and back == s
    rec = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    back = wire.decode(through_json(rec)[1])
    assert back.dtype == rec.dtype and encoders.encode(back) == encoders.encode(rec)


def test_large_values_go_to_the_store_and_come_back_by_uri(tmp_path):
    blobs = {}

    def store(data, label):
        uri = f"sha256://{__import__('hashlib').sha256(data).hexdigest()}"
        blobs[uri] = data
        return uri

    def load_path(uri):
        p = tmp_path / uri[9:]
        p.write_bytes(blobs[uri])
        return str(p)

    arr = np.arange(100_000, dtype=np.int64)
    big = b"x" * 70_000
    enc, obj = through_json({"a": arr, "b": big, "small": b"y"}, store=store)
    assert len(enc.content) == 2 and len(json.dumps(obj)) < 2000
    back = wire.decode(obj, load_path=load_path)
    assert np.array_equal(back["a"], arr) and back["b"] == big and back["small"] == b"y"
    with pytest.raises(WireError, match="cannot be fetched"):
        wire.decode(obj)


def test_a_file_travels_by_content_and_keeps_its_id(tmp_path):
    from kachery_tasks.runtime.tasks import File

    p = tmp_path / "raw.dat"
    p.write_bytes(b"recording")
    f = File(p)
    _, obj = through_json(f)
    assert obj == {"$file": f.uri}
    copy = tmp_path / "elsewhere"
    copy.write_bytes(b"recording")
    back = wire.decode(obj, load_path=lambda uri: str(copy))
    assert isinstance(back, File) and encoders.encode(back) == encoders.encode(f)


def test_a_task_result_travels_by_task_id():
    class Fut:
        _kachery_future = True
        task_id = "sha256:" + "ab" * 32

    _, obj = through_json([Fut()])
    assert obj == [{"$result": Fut.task_id}]
    assert wire.decode(obj, results=lambda tid: ("ref", tid)) == [("ref", Fut.task_id)]
    with pytest.raises(WireError, match="task result"):
        wire.decode(obj)


@dataclasses.dataclass
class Holder:  # module level: a dataclass the wire can name
    inside: object


def test_what_the_receiver_fetches_is_listed_wherever_it_is_nested(tmp_path):
    from kachery_tasks.runtime.tasks import File

    class Fut:
        _kachery_future = True
        task_id = "sha256:" + "cd" * 32

    p = tmp_path / "raw.dat"
    p.write_bytes(b"recording")
    f = File(p)
    text_uri = "sha256://" + "ef" * 32
    deep = {"a": [[[[Holder(inside=(f, Fut()))]]]], "b": text_uri, "c": "sha256 is a word"}
    enc = wire.encode(deep)
    assert enc.named == {f.uri: f.path, text_uri: None}
    assert enc.results == [Fut.task_id]
    assert wire.encode([1, "plain", b"x"]).named == {}


@pytest.mark.parametrize("value,match", [
    (object(), "cannot be sent"),
    (np.array([object()]), "Python objects"),
    (np.ma.masked_array([1, 2]), "masked"),
    (lambda: 1, "cannot be sent"),
])
def test_values_that_cannot_travel_are_refused_by_name(value, match):
    with pytest.raises(WireError, match=match):
        wire.encode(value, what="argument x")


def test_a_local_dataclass_is_refused():
    @dataclasses.dataclass
    class Local:
        a: int

    with pytest.raises(WireError, match="inside a function"):
        wire.encode(Local(1))


def test_too_deep_values_are_refused_both_ways():
    v: list = []
    for _ in range(200):
        v = [v]
    with pytest.raises(WireError, match="nested"):
        wire.encode(v)
    obj: list = []
    for _ in range(200):
        obj = [obj]
    with pytest.raises(WireError, match="nested"):
        wire.decode(obj)


@pytest.mark.parametrize("obj", [
    {"$nope": 1}, {"a": 1, "b": 2}, {"$int": "x"}, {"$int": "1" * 6000}, {"$float": "1.0"},
    {"$dict": [[1]]}, {"$dict": [[[1], 2]]}, {"$bytes": "***"}, {"$npy": "AAAA"},
    {"$npscalar": ["|O", ""]}, {"$content": ["bytes", "not-a-uri"]},
    {"$dataclass": ["no_such_module:X", {}]}, {"$dataclass": ["json:JSONDecoder", {}]},
    {"$set": 5}, {"$result": "x"},
])
def test_malformed_input_is_a_wire_error(obj):
    with pytest.raises(WireError):
        wire.decode(obj, results=lambda tid: (_ for _ in ()).throw(WireError("no")))


def test_a_dataclass_is_rebuilt_only_from_an_imported_module():
    p = Point(1.0, (2,))
    _, obj = through_json(p)
    assert obj["$dataclass"][0] == f"{__name__}:Point"
    assert wire.decode(obj) == p
    obj["$dataclass"][1]["z"] = 1
    with pytest.raises(WireError, match="do not match"):
        wire.decode(obj)
