"""Feed and Subfeed: create, load, append, read, watch, replay, snapshot, faults."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import stat
import threading
import time

import pytest

import kachery_tasks as kf
from kachery_tasks.errors import (
    FeedNotFoundError,
    FeedPermissionError,
    FeedVerificationError,
    InvalidURIError,
    InvalidValueError,
)
from kachery_tasks.feed_functions import import_lines
from kachery_tasks.feeds.messages import MAX_BODY_BYTES
from kachery_tasks.nodes import current_node


@pytest.fixture
def sub():
    return kf.create_feed("curation").subfeed("unit-labels")


def _other_node(monkeypatch, tmp_path, name="other"):
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / name))


def _db() -> sqlite3.Connection:
    return current_node().feeds.conn


# ------------------------------------------------------------ create/load
def test_create_feed_keeps_a_private_key_in_the_node(node_path):
    feed = kf.create_feed("curation")
    assert feed.uri == f"feed://{feed.id}"
    assert len(feed.id) == 64
    assert feed.writable and feed.label == "curation"
    key = node_path / "feeds" / "keys" / f"{feed.id}.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert feed.key().public_hex == feed.id


def test_load_feed_and_subfeed(sub):
    sub.append(1)
    feed = kf.load_feed(sub.feed.uri)
    assert feed == sub.feed and feed.writable and feed.label == "curation"
    assert kf.load_subfeed(sub.uri) == sub
    assert kf.load_subfeed(feed.uri).name == "main"
    assert feed.subfeeds() == {"unit-labels": 1}


def test_load_unknown_feed():
    with pytest.raises(FeedNotFoundError, match="import"):
        kf.load_feed("feed://" + "ab" * 32)


def test_load_malformed_uri():
    with pytest.raises(InvalidURIError):
        kf.load_feed("feed://xyz")
    with pytest.raises(InvalidURIError, match="load_subfeed"):
        kf.load_feed(f"feed://{'ab' * 32}/sub")


def test_feed_known_by_its_key_file_alone(node_path):
    feed = kf.create_feed()
    _db().execute("DELETE FROM feeds")  # as if a crash came between key and row
    assert kf.load_feed(feed.uri).writable
    assert [f.feed_id for f in kf.list_feeds()] == [feed.id]


def test_list_feeds_and_info(sub):
    sub.append_many([1, 2])
    sub.feed.append("x")
    other = kf.create_feed()
    infos = kf.list_feeds()
    assert [i.feed_id for i in infos] == [sub.feed.id, other.id]
    assert infos[0].subfeeds == {"main": 1, "unit-labels": 2}
    assert infos[0].messages == 3 and infos[0].writable and infos[0].label == "curation"
    assert infos[1].messages == 0


def test_bad_subfeed_name(sub):
    with pytest.raises(InvalidValueError, match="subfeed name"):
        sub.feed.subfeed("has space")


# ----------------------------------------------------------------- append
def test_append_returns_the_signed_message(sub):
    before = time.time()
    m0 = sub.append({"unit": 3, "label": "noise"})
    m1 = sub.append({"unit": 4, "label": "good"})
    assert (m0.seq, m0.prev, m0.subfeed, m0.feed) == (0, None, "unit-labels", sub.feed.id)
    assert (m1.seq, m1.prev) == (1, m0.hash)
    assert m0.body == {"unit": 3, "label": "noise"}
    assert before - 1 <= m0.time <= time.time() + 1
    assert sub.count() == 2
    assert list(sub.read()) == [m0, m1]


def test_append_many_is_one_chain(sub):
    sub.append("first")
    msgs = sub.append_many([{"unit": i} for i in range(5)])
    assert [m.seq for m in msgs] == [1, 2, 3, 4, 5]
    assert all(b.prev == a.hash for a, b in itertools.pairwise(msgs))
    assert sub.append_many([]) == []
    assert [m.body for m in sub.read(1)] == [{"unit": i} for i in range(5)]
    assert sub.feed.verify() == {"unit-labels": 6}
    assert sub.feed.verify(every_signature=False) == {"unit-labels": 6}


@pytest.mark.parametrize(
    "body", [object(), float("nan"), "x" * MAX_BODY_BYTES, {"a": {1, 2}}, {10: "a", 9: "b"}]
)
def test_bad_body_is_refused_and_nothing_written(sub, body):
    with pytest.raises(InvalidValueError):
        sub.append(body)
    with pytest.raises(InvalidValueError):
        sub.append_many([1, body, 3])
    assert sub.count() == 0


def test_body_round_trips_as_json(sub):
    m = sub.append({"t": (1, 2), "n": None, "f": 0.5, "s": "é\n"})
    assert m.body == {"t": [1, 2], "n": None, "f": 0.5, "s": "é\n"}
    assert next(sub.read()).body == m.body


def test_default_subfeed(sub):
    feed = sub.feed
    feed.append(1)
    feed.append_many([2, 3])
    assert feed.count() == 3
    assert [m.body for m in feed.read()] == [1, 2, 3]
    assert feed.subfeed("main").count() == 3
    assert feed.replay(lambda s, m: s + m.body, 0) == 6
    assert feed.watch(0, timeout=0)[0].body == 1


def test_read_only_feed_cannot_append(sub, monkeypatch, tmp_path):
    sub.append(1)
    data = b"".join(line + b"\n" for line in sub.export_lines())
    _other_node(monkeypatch, tmp_path)
    import_lines(data.splitlines())
    feed = kf.load_feed(sub.feed.uri)
    assert not feed.writable
    assert "read-only" in repr(feed)
    with pytest.raises(FeedPermissionError, match="no private key"):
        feed.subfeed("unit-labels").append(2)
    with pytest.raises(FeedPermissionError):
        feed.subfeed("unit-labels").append_many([2])
    assert [m.body for m in feed.subfeed("unit-labels").read()] == [1]


# ------------------------------------------------------------------- read
def test_read_ranges(sub):
    sub.append_many(list(range(10)))
    assert [m.body for m in sub.read(7)] == [7, 8, 9]
    assert [m.body for m in sub.read(2, 4)] == [2, 3]
    assert list(sub.read(10)) == [] and list(sub.read(50)) == []
    assert list(sub.read(3, 3)) == []
    for mode in ("chain", "full", "none"):
        assert [m.seq for m in sub.read(5, verify=mode)] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("args", [(-1,), (2, 1), (0, -1), ("0",)])
def test_read_bad_range(sub, args):
    with pytest.raises(InvalidValueError):
        sub.read(*args)


def test_read_bad_verify_mode(sub):
    with pytest.raises(InvalidValueError, match="verify"):
        sub.read(verify="some")


def test_read_spans_pages(sub, monkeypatch):
    import kachery_tasks.feeds.feed as feed_mod

    monkeypatch.setattr(feed_mod, "READ_PAGE_ROWS", 3)
    sub.append_many(list(range(10)))
    assert [m.body for m in sub.read(1)] == list(range(1, 10))


def test_empty_subfeed(sub):
    assert sub.count() == 0
    assert list(sub.read()) == []
    assert sub.replay(lambda s, m: s + 1, 0) == 0
    assert sub.verify() == 0


# ------------------------------------------------------- corrupted rows
def _corrupt(sql: str, *params) -> None:
    _db().execute(sql, params)


def test_edited_row_is_detected_on_read_and_verify(sub):
    sub.append_many([{"i": i} for i in range(5)])
    _corrupt("UPDATE messages SET data = replace(data, '\"i\":2', '\"i\":9') WHERE seq = 2")
    with pytest.raises(FeedVerificationError, match="seq 2") as info:
        list(sub.read())
    assert (info.value.feed, info.value.subfeed, info.value.seq) == (sub.feed.id, "unit-labels", 2)
    assert [m.seq for m in sub.read(0, 2)] == [0, 1]  # what comes before is still readable
    with pytest.raises(FeedVerificationError, match="seq 2"):
        sub.feed.verify()


def test_row_edited_with_a_matching_hash_is_detected(sub):
    sub.append_many([{"i": i} for i in range(5)])
    # An attacker who rewrites the bytes and the stored hash still cannot sign.
    _corrupt("UPDATE messages SET data = replace(data, '\"i\":2', '\"i\":9') WHERE seq = 2")
    _fix_hash(2)
    with pytest.raises(FeedVerificationError, match=r"seq 2.*signature"):
        list(sub.read())
    with pytest.raises(FeedVerificationError, match="seq 2"):
        sub.verify()
    with pytest.raises(FeedVerificationError, match="seq 2"):
        sub.verify(every_signature=False)


def test_last_row_edited_with_a_matching_hash_is_detected(sub):
    sub.append_many([{"i": i} for i in range(3)])
    _corrupt("UPDATE messages SET data = replace(data, '\"i\":2', '\"i\":9') WHERE seq = 2")
    _fix_hash(2)
    with pytest.raises(FeedVerificationError, match=r"seq 2.*signature"):
        list(sub.read())
    with pytest.raises(FeedVerificationError, match=r"seq 2.*signature"):
        sub.watch(2, timeout=0)


def _fix_hash(seq: int) -> None:
    import hashlib

    (data,) = (
        _db().execute("SELECT CAST(data AS BLOB) FROM messages WHERE seq = ?", (seq,)).fetchone()
    )
    _corrupt("UPDATE messages SET hash = ? WHERE seq = ?", hashlib.sha256(data).hexdigest(), seq)


def test_deleted_row_is_detected(sub):
    sub.append_many(list(range(5)))
    _corrupt("DELETE FROM messages WHERE seq = 1")
    with pytest.raises(FeedVerificationError, match=r"seq 1.*missing"):
        list(sub.read())
    with pytest.raises(FeedVerificationError, match="seq 1"):
        sub.verify()
    with pytest.raises(FeedVerificationError, match=r"seq 1.*missing"):
        list(sub.read(2))


def test_garbage_row_is_detected_even_without_verification(sub):
    sub.append_many(list(range(3)))
    _corrupt("UPDATE messages SET data = x'00ff' WHERE seq = 1")
    for mode in ("chain", "none"):
        with pytest.raises(FeedVerificationError, match="seq 1"):
            list(sub.read(verify=mode))


# ------------------------------------------------------------------ watch
def test_watch_times_out_with_nothing(sub):
    assert sub.watch(timeout=0.02) == []
    assert sub.watch(timeout=0) == []


def test_watch_returns_what_is_already_there(sub):
    sub.append_many([1, 2, 3])
    assert [m.body for m in sub.watch(1, timeout=0)] == [2, 3]
    assert [m.body for m in sub.watch(0, timeout=0, max_messages=2)] == [1, 2]


def test_watch_wakes_up_for_an_append_from_another_thread(sub):
    sub.append("old")
    start = sub.count()
    timer = threading.Timer(0.05, lambda: sub.append("new"))
    timer.start()
    try:
        got = sub.watch(start, timeout=30)
    finally:
        timer.join()
    assert [m.body for m in got] == ["new"]
    assert sub.watch(timeout=0.01) == []  # default start: the current count


def test_awatch(sub):
    async def main():
        task = asyncio.create_task(sub.awatch(0, timeout=30))
        await asyncio.sleep(0.02)
        assert not task.done()  # it waits without blocking the loop
        sub.append({"a": 1})
        return await task

    assert [m.body for m in asyncio.run(main())] == [{"a": 1}]
    assert asyncio.run(sub.awatch(timeout=0.01)) == []


@pytest.mark.parametrize(
    "kwargs", [{"start": -1}, {"timeout": -1}, {"max_messages": 0}, {"poll_interval": 0}]
)
def test_watch_bad_arguments(sub, kwargs):
    with pytest.raises(InvalidValueError):
        sub.watch(**{"timeout": 0, **kwargs})
    with pytest.raises(InvalidValueError):
        asyncio.run(sub.awatch(**{"timeout": 0, **kwargs}))


def test_follow_yields_old_then_new(sub):
    sub.append_many([0, 1])
    threading.Timer(0.05, lambda: sub.append(2)).start()
    it = sub.follow(1)
    assert [next(it).body for _ in range(2)] == [1, 2]


# ----------------------------------------------------- replay, snapshot
def test_replay_reconstructs_state(sub):
    sub.append_many(
        [
            {"unit": 3, "label": "noise"},
            {"unit": 4, "label": "good"},
            {"unit": 3, "label": "mua"},
        ]
    )

    def reducer(state, m):
        return {**state, m.body["unit"]: m.body["label"]}

    assert sub.replay(reducer, {}) == {3: "mua", 4: "good"}


def test_snapshot_is_an_importable_immutable_copy(sub, monkeypatch, tmp_path):
    import kachery_tasks as kachery

    sub.append_many([{"i": i} for i in range(4)])
    uri = sub.snapshot()
    assert uri.startswith("sha256://")
    data = kachery.load_bytes(uri)
    assert data == b"".join(line + b"\n" for line in sub.export_lines())
    sub.append("later")
    assert kachery.load_bytes(uri) == data  # the snapshot does not change
    path = tmp_path / "snap.jsonl"
    path.write_bytes(data)
    _other_node(monkeypatch, tmp_path)
    report = kf.import_feed(path)
    assert report.added == 4
    assert [m.body for m in kf.load_subfeed(sub.uri).read()] == [{"i": i} for i in range(4)]


# ----------------------------------------------------------------- nesting
def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_append_refuses_a_body_nested_past_the_limit_and_writes_nothing(sub):
    from kachery_tasks.feeds.messages import MAX_BODY_DEPTH

    sub.append({"ok": _nested(MAX_BODY_DEPTH - 1)})  # 100 levels with the object
    for depth in (MAX_BODY_DEPTH + 1, 990):
        with pytest.raises(InvalidValueError, match=f"more than {MAX_BODY_DEPTH} levels"):
            sub.append(_nested(depth))
        with pytest.raises(InvalidValueError, match=f"more than {MAX_BODY_DEPTH} levels"):
            sub.append_many(["fine", _nested(depth)])
    assert sub.count() == 1
    assert [m.body for m in sub.read()] == [{"ok": _nested(MAX_BODY_DEPTH - 1)}]
    assert sub.feed.verify() == {"unit-labels": 1}


def test_a_stored_message_too_deep_to_decode_is_a_verification_error(sub, tmp_path):
    """A message stored before the limit existed makes reads fail with a clear error
    naming it (not a RecursionError), and what precedes it stays readable."""
    from kachery_tasks.feeds.messages import sign_message

    sub.append_many(["a", "b"])
    key, store = sub.feed.key(), current_node().feeds
    deep = b"[" * 50_000 + b"1" + b"]" * 50_000
    store.append(sub.feed.id, sub.name,
                 lambda seq, prev: [sign_message(key, sub.name, seq, prev, 1000, deep)])
    for mode in ("chain", "full", "none"):
        with pytest.raises(FeedVerificationError, match="seq 2: stored body is nested too deeply"):
            list(sub.read(verify=mode))
    with pytest.raises(FeedVerificationError, match="seq 2"):
        sub.feed.verify()
    with pytest.raises(FeedVerificationError, match="seq 2"):
        sub.feed.export(tmp_path / "out.jsonl")
    assert [m.body for m in sub.read(0, 2)] == ["a", "b"]


# ------------------------------------------------- appending on a damaged head
def _edit_head(seq: int, fix_hash: bool) -> None:
    _corrupt(f"UPDATE messages SET data = replace(data, '\"i\":{seq}', '\"i\":99') WHERE seq = ?",
             seq)
    if fix_hash:
        _fix_hash(seq)


def _fresh_store_feed(sub):
    """The same subfeed through a new FeedStore, as another process would see it."""
    from kachery_tasks.feeds.store import FeedStore

    return kf.Feed(sub.feed.id, FeedStore(current_node().dir)).subfeed(sub.name)


@pytest.mark.parametrize("fix_hash", [True, False])
@pytest.mark.parametrize("other_process", [False, True])
def test_append_refuses_to_sign_on_top_of_an_edited_head(sub, fix_hash, other_process):
    sub.append_many([{"i": i} for i in range(3)])
    _edit_head(2, fix_hash)
    target = _fresh_store_feed(sub) if other_process else sub
    for append in (lambda: target.append({"i": 3}), lambda: target.append_many([{"i": 3}])):
        with pytest.raises(FeedVerificationError, match="seq 2") as e:
            append()
        assert (e.value.feed, e.value.subfeed, e.value.seq) == (sub.feed.id, sub.name, 2)
        assert str(e.value).startswith("cannot append on top of a damaged subfeed")
        assert "\n" not in str(e.value)
    assert sub.count() == 3
    assert current_node().feeds.hash_at(sub.feed.id, sub.name, 3) is None


def test_append_refuses_a_head_that_does_not_link_to_its_predecessor(sub):
    """A head signed by the key but pointing at another predecessor (a fork) is refused."""
    from kachery_tasks.feeds.messages import encode_body, sign_message

    sub.append_many([{"i": i} for i in range(3)])
    forged = sign_message(sub.feed.key(), sub.name, 2, "0" * 64, 1000, encode_body({"i": 7}))
    _corrupt("UPDATE messages SET data = ?, hash = ? WHERE seq = 2", forged.data, forged.hash)
    with pytest.raises(FeedVerificationError, match=r"seq 2.*does not link"):
        _fresh_store_feed(sub).append({"i": 3})
    with pytest.raises(FeedVerificationError, match=r"seq 2.*does not link"):
        sub.append({"i": 3})
    _corrupt("DELETE FROM messages WHERE seq = 1")
    with pytest.raises(FeedVerificationError, match=r"seq 1.*missing"):
        _fresh_store_feed(sub).append({"i": 3})
    assert sub.count() == 3


def test_append_goes_on_over_a_sound_head_written_by_another_process(sub):
    sub.append_many([{"i": i} for i in range(2)])
    other = _fresh_store_feed(sub)
    other.append({"i": 2})
    m = sub.append({"i": 3})
    assert m.seq == 3 and m.prev == other.feed._store.hash_at(sub.feed.id, sub.name, 2)
    assert sub.verify() == 4
