"""The SQLite feed store: transactions, chain checks on extend, paging, indexes."""

from __future__ import annotations

import os
import stat

import pytest

from kachery_tasks import create_feed
from kachery_tasks.errors import FeedPermissionError, FeedVerificationError
from kachery_tasks.feeds.messages import encode_body, sign_message
from kachery_tasks.keys import KeyPair
from kachery_tasks.nodes import current_node


@pytest.fixture
def store():
    return current_node().feeds


def _chain(key: KeyPair, n: int, subfeed: str = "s", start: int = 0, prev=None) -> list:
    out = []
    for i in range(start, start + n):
        m = sign_message(key, subfeed, i, prev, 1000 + i, encode_body(i))
        out.append(m)
        prev = m.hash
    return out


def test_database_lives_in_the_node_dir_in_wal_mode(store, node_path):
    assert store.path == node_path / "feeds" / "feeds.db"
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(os.stat(store.keys_dir).st_mode) == 0o700


def test_append_gives_build_the_true_head(store):
    key = KeyPair.generate()
    seen = []

    def build(seq, prev):
        seen.append((seq, prev))
        return _chain(key, 2, start=seq, prev=prev)

    first = store.append(key.public_hex, "s", build)
    store.append(key.public_hex, "s", build)
    assert seen == [(0, None), (2, first[1].hash)]
    assert store.count(key.public_hex, "s") == 4


def test_append_after_another_writer_gets_the_true_head(store, node_path):
    """A store remembers the head it wrote; when another writer (another process)
    appended since, the append is built again on the true head (checked first)."""
    from kachery_tasks.config import NodeDir
    from kachery_tasks.feeds.store import FeedStore

    other = FeedStore(NodeDir(node_path))  # its own connection, like another process
    key = KeyPair.generate()
    seen = []

    def build(seq, prev):
        seen.append((seq, prev))
        return _chain(key, 1, start=seq, prev=prev)

    a0 = store.append(key.public_hex, "s", build)[0]
    b1 = other.append(key.public_hex, "s", build)[0]
    a2 = store.append(key.public_hex, "s", build)[0]
    assert (b1.seq, b1.prev, a2.seq, a2.prev) == (1, a0.hash, 2, b1.hash)
    # the stale head (1, a0) was tried first, then the true one
    assert seen == [(0, None), (1, a0.hash), (1, a0.hash), (2, b1.hash)]
    store.append(key.public_hex, "s", build)  # and the remembered head is right again
    assert seen[-1] == (3, a2.hash)
    assert store.count(key.public_hex, "s") == 4
    other.conn.close()


def test_failed_append_writes_nothing(store):
    key = KeyPair.generate()
    store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 1))

    def boom(seq, prev):
        raise RuntimeError("crash while building")

    with pytest.raises(RuntimeError):
        store.append(key.public_hex, "s", boom)
    with pytest.raises(RuntimeError):
        store.append(key.public_hex, "new", boom)
    assert store.count(key.public_hex, "s") == 1
    assert store.subfeeds(key.public_hex) == [("s", 1)]
    assert store.sub_id(key.public_hex, "new") is None


def test_a_duplicate_seq_cannot_be_written(store):
    key = KeyPair.generate()
    store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 2))
    # A buggy builder that ignores the head it is given is stopped by the primary key.
    with pytest.raises(Exception, match="UNIQUE"):
        store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 1))
    assert store.count(key.public_hex, "s") == 2


def test_extend_adds_skips_present_and_is_idempotent(store):
    key = KeyPair.generate()
    msgs = _chain(key, 5)
    r = store.extend(msgs[:3])
    assert (r.added, r.present) == (3, 0)
    r = store.extend(msgs)
    assert (r.added, r.present) == (2, 3)
    r = store.extend(msgs)
    assert (r.added, r.present) == (0, 5)
    assert store.count(key.public_hex, "s") == 5
    assert store.get_feed(key.public_hex) is not None


def test_extend_refuses_a_gap_and_keeps_the_prefix(store):
    key = KeyPair.generate()
    msgs = _chain(key, 6)
    with pytest.raises(FeedVerificationError, match="missing") as info:
        store.extend([*msgs[:2], *msgs[3:]])
    assert info.value.seq == 3
    assert store.count(key.public_hex, "s") == 2


def test_extend_refuses_a_fork(store):
    key = KeyPair.generate()
    msgs = _chain(key, 3)
    store.extend(msgs)
    fork = sign_message(key, "s", 2, msgs[1].hash, 99, encode_body("other"))
    with pytest.raises(FeedVerificationError, match="differs") as info:
        store.extend([fork])
    assert info.value.seq == 2
    wrong_prev = sign_message(key, "s", 3, "0" * 64, 99, encode_body("x"))
    with pytest.raises(FeedVerificationError, match="prev") as info:
        store.extend([wrong_prev])
    assert info.value.seq == 3
    assert store.count(key.public_hex, "s") == 3


def test_rows_pages_by_count_and_bytes(store):
    key = KeyPair.generate()
    store.extend(_chain(key, 10))
    assert [r[0] for r in store.rows(key.public_hex, "s", 2, None, 3, 1 << 20)] == [2, 3, 4]
    assert [r[0] for r in store.rows(key.public_hex, "s", 8, None, 100, 1 << 20)] == [8, 9]
    assert [r[0] for r in store.rows(key.public_hex, "s", 0, 4, 100, 1 << 20)] == [0, 1, 2, 3]
    assert [r[0] for r in store.rows(key.public_hex, "s", 0, None, 100, 1)] == [0]
    assert store.rows(key.public_hex, "nothing", 0, None, 100, 1 << 20) == []
    assert store.hash_at(key.public_hex, "s", 9) is not None
    assert store.hash_at(key.public_hex, "s", 10) is None


def test_hot_queries_use_the_primary_key_index(store):
    """The store's own statements (captured as it runs them), not copies of them."""
    key = KeyPair.generate()
    store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 20, start=seq, prev=prev))
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    try:
        store.count(key.public_hex, "s")
        store.rows(key.public_hex, "s", 5, None, 100, 1 << 20)
        store.hash_at(key.public_hex, "s", 5)
        store._trusted.clear()  # as in another process: the head is read and checked
        store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 1, start=seq, prev=prev))
        store.append(key.public_hex, "s", lambda seq, prev: _chain(key, 1, start=seq, prev=prev))
    finally:
        store.conn.set_trace_callback(None)
    queries = [q for q in seen if "SELECT" in q.upper() and "messages" in q]
    assert len(queries) >= 6, seen
    for sql in queries:
        plan = " ".join(str(r[-1]) for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql))
        plan = plan.replace("SCAN CONSTANT ROW", "")  # INSERT ... SELECT of one row
        assert "PRIMARY KEY" in plan and "SCAN" not in plan, (sql, plan)


def test_key_file_readable_by_others_is_refused():
    feed = create_feed("x")
    path = current_node().feeds.key_path(feed.id)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    from kachery_tasks import load_feed

    with pytest.raises(FeedPermissionError, match=f"chmod 600 {path}"):
        load_feed(feed.uri).append(1)
    assert load_feed(feed.uri).count() == 0


# ------------------------------------------------------- damaged and full disks
def test_append_on_a_full_disk_is_storage_full_and_changes_nothing(small_fs, monkeypatch):
    from kachery_tasks.errors import StorageFullError

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(small_fs("1M") / "node"))
    feed = create_feed()
    feed.append_many([{"i": i} for i in range(3)])
    before = [m.to_bytes() for m in feed.read()]
    big = {"blob": "x" * 60_000}
    with pytest.raises(StorageFullError) as e:
        for _ in range(100):  # 6 MB into a 1 MiB file system
            feed.append(big)
    assert "\n" not in str(e.value) and "feeds.db" in str(e.value)
    n = feed.count()
    assert [m.to_bytes() for m in feed.read(0, 3)] == before
    assert feed.verify() == {"main": n}  # every message there is whole and signed
    with pytest.raises(StorageFullError):
        feed.append_many([big] * 30)  # all or nothing
    assert feed.count() == n
    assert feed.verify() == {"main": n}


def test_a_damaged_feed_database_is_a_one_line_error_saying_what_to_do(store):
    from kachery_tasks.errors import StorageError
    from kachery_tasks.feeds.store import FeedStore

    feed = create_feed()
    feed.append_many([{"text": "y" * 300, "i": i} for i in range(200)])
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = store.path.stat().st_size
    with open(store.path, "r+b") as f:  # every page but the schema's
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    with pytest.raises(StorageError) as e:
        FeedStore(current_node().dir).rows(feed.id, "main", 0, None, 1000, 1 << 30)
    assert f"database {store.path} is damaged" in str(e.value)
    assert "import the feeds again" in str(e.value) and "\n" not in str(e.value)


def test_writes_of_this_process_are_reported_to_listeners(store):
    calls = []
    remove = store.on_commit(lambda: calls.append(1))
    feed = create_feed()
    feed.subfeed("s").append(1)
    feed.subfeed("s").append_many([2, 3])
    assert len(calls) == 2
    other = KeyPair.generate()
    store.extend(_chain(other, 2))  # an import adds messages: reported
    store.extend(_chain(other, 2))  # nothing new: not reported
    assert len(calls) == 3
    remove()
    feed.subfeed("s").append(4)
    assert len(calls) == 3
