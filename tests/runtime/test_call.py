"""Call: what ``Task.prepare`` encodes, what runs, and how a call travels to a peer."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kachery_tasks as kt
import kachery_tasks.runtime as kachery
from kachery_tasks.canonical import canonical_json
from kachery_tasks.errors import CallRejectedError, TaskError
from kachery_tasks.runtime import cache, encoders, ids
from kachery_tasks.runtime.call import Call, ResultRef
from kachery_tasks.runtime.wire import WireError


@kachery.pure
def blend(a, b=2.0, *rest, scale: float = 1.0, **extra):
    return [a, b, list(rest), scale, sorted(extra)]


@kachery.pure(version="3")
def plain(x, y=None):
    return repr((x, y))


@kachery.pure
def total(values):
    return float(np.asarray(values, dtype=float).sum())


@kachery.action
def note(path: str, text: str):
    with open(path, "a") as f:
        f.write(text)


TASKS = {t.name: t for t in (blend, plain, total, note)}


def lookup(name):
    return TASKS.get(name)


def reprepared(data, **kw):
    return Call.from_bytes(data, lookup, **kw)


# ------------------------------------------------------------------ prepare
def test_prepare_encodes_the_call_without_running_it():
    call = blend.prepare(1, 3, 4, 5, scale=0.5, colour="red")
    assert call.task is blend and call.kind == "pure" and call.function == "test_call.blend"
    assert call.version is None and call.code_hash == blend.code_hash is not None
    assert call.task_id == blend.task_id(1, 3, 4, 5, scale=0.5, colour="red")
    assert "sha256:" + hashlib.sha256(b"".join(call.parts)).hexdigest() == call.task_id
    assert call.args == (1, 3, 4, 5) and call.kwargs == {"scale": 0.5, "colour": "red"}
    assert call.arguments() == {"a": 1, "b": 3, "rest": (4, 5), "scale": 0.5,
                                "extra": {"colour": "red"}}
    assert call.policy is blend.policy
    versioned = plain.prepare("x")
    assert versioned.version == "3" and versioned.code_hash is None
    assert versioned.arguments() == {"x": "x", "y": None}  # defaults applied


def test_the_id_is_the_reference_computation_of_the_bound_arguments():
    call = blend.prepare(7)
    assert call.task_id == ids.compute_task_id("pure", blend.name, None, blend.code_hash,
                                               call.arguments())


def test_a_call_cannot_be_changed():
    call = plain.prepare(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.task_id = "sha256:" + "0" * 64  # type: ignore[misc]
    assert dataclasses.replace(call, args=(2,)).args == (2,)


def test_components_change_only_for_the_argument_that_changed():
    one = blend.prepare(1, 2.0, scale=1.0).components()
    other = blend.prepare(1, 2.0, scale=2.0).components()
    assert set(one) == {"a", "b", "rest", "scale", "extra"}
    assert {k for k in one if one[k] != other[k]} == {"scale"}
    assert one["a"] == hashlib.sha256(encoders.encode(1)).hexdigest()


def test_start_describes_the_call_for_the_records():
    uri = "sha256://" + "cd" * 32
    call = plain.prepare(uri, y=np.zeros(4))
    start = call.start("miss", "node-1")
    assert (start.task_id, start.kind, start.function, start.version, start.code_hash) == (
        call.task_id, "pure", "test_call.plain", "3", None)
    assert start.args == {"x": repr(uri), "y": "ndarray(float64, shape=(4,))"}
    assert start.inputs == [uri] and start.reason == "miss" and start.node == "node-1"
    assert start.components == {"args": call.components()}


@kachery.query
def no_parameters():
    return 7


def test_a_task_without_parameters_runs_and_describes_its_call():
    call = no_parameters.prepare()
    assert call.components() == {} and call.start("query", "node-1").components == {"args": {}}
    assert no_parameters() == 7


def test_run_runs_a_prepared_call_like_a_direct_call():
    call = blend.prepare(1, b=5)
    assert blend.run(call) == [1, 5, [], 1.0, []]
    assert blend.is_cached(1, 5)
    with pytest.raises(TaskError, match=r"cannot run a call of test_call\.blend"):
        plain.run(call)


def test_run_again_through_a_prepared_call(tmp_path):
    target = str(tmp_path / "log")
    call = note.prepare(target, "x")
    first, second = note.run(call), note.run(call)
    assert first.ran and not second.ran
    assert note.run(call, "again").ran
    with open(target) as f:
        assert f.read() == "xx"


# --------------------------------------------------------------------- wire
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
           | st.binary(max_size=20))
hashables = st.recursive(scalars, lambda i: st.tuples(i, i) | st.frozensets(i, max_size=3),
                         max_leaves=5)
values = st.recursive(
    scalars | hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=2, max_side=3)),
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(hashables, inner, max_size=3)
                   | st.sets(hashables, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(values, values, st.lists(values, max_size=2),
       st.dictionaries(st.text(min_size=1, max_size=5).filter(
           lambda k: k not in ("a", "b", "scale", "rest", "extra")), values, max_size=2))
def test_a_call_rebuilt_from_bytes_has_the_same_id(a, b, rest, extra):
    call = blend.prepare(a, b, *rest, **extra)
    data = call.to_bytes()
    assert canonical_json(json.loads(data)) == data
    back = reprepared(data)
    assert back.task is blend and back.task_id == call.task_id
    for name, v in call.arguments().items():
        assert encoders.encode(back.arguments()[name]) == encoders.encode(v)


def test_the_document_names_the_call():
    call = plain.prepare((1, 2), y={"k": b"v"})
    doc = json.loads(call.to_bytes())
    assert doc == {"function": "test_call.plain", "version": "3", "code_hash": None,
                   "kind": "pure", "task_id": call.task_id,
                   "args": {"x": {"$tuple": [1, 2]}, "y": {"$dict": [["k", {"$bytes": "dg=="}]]}}}


def _tampered(call: Call, **changes) -> bytes:
    doc = json.loads(call.to_bytes())
    for key, value in changes.items():
        if key == "args":
            doc["args"].update(value)
        else:
            doc[key] = value
    return canonical_json(doc)


def test_a_changed_argument_is_refused_naming_both_ids():
    call = blend.prepare(1, 2.0)
    data = _tampered(call, args={"a": 666})
    with pytest.raises(CallRejectedError) as e:
        reprepared(data)
    assert call.task_id in str(e.value) and blend.task_id(666, 2.0) in str(e.value)


def test_a_changed_id_is_refused():
    call = blend.prepare(1, 2.0)
    other = blend.task_id(1, 3.0)
    with pytest.raises(CallRejectedError, match=other):
        reprepared(_tampered(call, task_id=other))


def test_a_changed_code_hash_is_refused_naming_both_hashes():
    call = blend.prepare(1)
    forged = "f" * 64
    with pytest.raises(CallRejectedError) as e:
        reprepared(_tampered(call, code_hash=forged))
    assert forged in str(e.value) and blend.code_hash in str(e.value)


def test_another_version_or_kind_is_refused():
    call = plain.prepare(1)
    with pytest.raises(CallRejectedError, match=r"version '4'.*version '3'"):
        reprepared(_tampered(call, version="4"))
    with pytest.raises(CallRejectedError, match="'action' call"):
        reprepared(_tampered(call, kind="action"))


def test_an_unknown_or_renamed_function_is_refused():
    call = plain.prepare(1)
    with pytest.raises(CallRejectedError, match="not a task on this node"):
        reprepared(_tampered(call, function="elsewhere.plain"))
    with pytest.raises(CallRejectedError, match="not a task on this node"):
        Call.from_bytes(call.to_bytes(), {}.__getitem__)  # a KeyError is "not found"
    with pytest.raises(CallRejectedError, match=r"found for it is test_call\.blend"):
        Call.from_bytes(call.to_bytes(), lambda name: blend)


def test_other_parameters_are_refused():
    call = plain.prepare(1)
    doc = json.loads(call.to_bytes())
    doc["args"]["z"] = 1
    with pytest.raises(CallRejectedError, match="takes \\['x', 'y'\\]"):
        reprepared(canonical_json(doc))


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b'{"function": "x"}',
    canonical_json({"function": 1, "version": None, "code_hash": None, "kind": "pure",
                    "task_id": "sha256:" + "0" * 64, "args": {}}),
    canonical_json({"function": "test_call.plain", "version": "3", "code_hash": None,
                    "kind": "pure", "task_id": "sha256:xyz", "args": {}}),
])
def test_a_malformed_document_is_an_invalid_value(data):
    with pytest.raises(kt.InvalidValueError):
        reprepared(data)


def test_large_arrays_travel_by_uri():
    store = cache.current().store
    sent: list[str] = []

    def store_bytes(data, label):
        sent.append(store.store_bytes(data, label=label))
        return sent[-1]

    x = np.arange(200_000, dtype=np.float64)
    call = total.prepare(x)
    data = call.to_bytes(store_bytes)
    assert len(data) < 1000 and len(sent) == 1 and sent[0] in data.decode()
    loaded: list[str] = []

    def load_path(uri):
        loaded.append(uri)
        return kt.load_file(uri)

    back = reprepared(data, load_path=load_path)
    assert loaded == sent and back.task_id == call.task_id
    assert np.array_equal(back.args[0], x)
    with pytest.raises(WireError, match="cannot be fetched"):
        reprepared(data)  # no way to fetch the content


def test_a_file_argument_travels_by_content(tmp_path):
    p = tmp_path / "raw.dat"
    p.write_bytes(b"recording")
    call = plain.prepare(kachery.File(p))
    uri = kt.store_file(str(p))
    back = reprepared(call.to_bytes(), load_path=kt.load_file)
    assert back.task_id == call.task_id and back.args[0].sha256 == call.args[0].sha256
    assert uri.split("?")[0] in call.to_bytes().decode()


def test_a_task_result_travels_by_id_and_resolves_when_the_task_runs():
    producer = plain.prepare("seed")
    fut = kachery.LocalExecutor().submit(plain, ("seed",), {})
    call = total.prepare([1.0, fut])  # not run: only encoded
    doc = json.loads(call.to_bytes())
    assert doc["args"]["values"] == [1.0, {"$result": producer.task_id}]
    with pytest.raises(WireError, match="task result"):
        reprepared(call.to_bytes())
    asked: list[str] = []

    def load(task_id):
        asked.append(task_id)
        return 2.5

    back = reprepared(call.to_bytes(), results=lambda tid: ResultRef(tid, load))
    assert back.task_id == call.task_id  # a ResultRef encodes as the TaskFuture did
    assert isinstance(back.args[0][1], ResultRef) and asked == []
    assert total.run(back) == 3.5 and asked == [producer.task_id]
    run = cache.current().records.runs(task_id=back.task_id)[0]
    assert run.inputs == [producer.task_id]


def test_a_result_reference_needs_a_task_id():
    with pytest.raises(kt.InvalidValueError):
        ResultRef("sha256:nothex", lambda tid: None)
    doc = json.loads(total.prepare([1.0]).to_bytes())
    doc["args"]["values"] = [{"$result": "not an id"}]
    data = canonical_json(doc)
    with pytest.raises(WireError, match="not a task id"):
        reprepared(data, results=lambda tid: ResultRef(tid, lambda t: 0))


@kachery.query
def no_arguments():
    return 42


def test_a_task_without_parameters_is_described_and_runs():
    call = no_arguments.prepare()
    assert call.components() == {}
    assert call.start("query", "node").components == {"args": {}}
    assert no_arguments() == 42
