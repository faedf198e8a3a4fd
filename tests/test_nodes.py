"""Nodes side by side in one process: each its own store, feeds, key and remotes."""

from __future__ import annotations

import os
import pickle
import threading
from collections import Counter

import numpy as np
import pytest

import kachery_tasks as kachery
from kachery_tasks.errors import ConfigError, ContentNotFoundError, FeedNotFoundError
from kachery_tasks.nodes import Node, current_node, default_node
from kachery_tasks.remotes.bucket import BucketRemote
from kachery_tasks.storage.layout import result_key

computed: Counter[str] = kachery.untracked(Counter())


@kachery.pure(name="tests.nodes.squares")
def squares(n: int) -> list:
    computed["squares"] += 1
    return [i * i for i in range(n)]


@pytest.fixture
def two_nodes(tmp_path):
    url = f"file://{tmp_path}/bucket"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.toml").write_text('[store]\nchunk_size = "4KiB"\n')
    a = kachery.node(tmp_path / "a", remotes=[url])
    b = kachery.node(tmp_path / "b", remotes=[url])
    return a, b, BucketRemote(url)


def test_a_whole_bucket_exchange_between_two_nodes_leaves_the_environment_alone(two_nodes):
    a, b, remote = two_nodes
    env = dict(os.environ)
    default = default_node()
    assert a.id != b.id != default.id

    # content, large enough to travel as verified chunks
    data = os.urandom(3 * 4096 + 17)
    uri = a.store_bytes(data, label="raw.dat")
    [(_, report)] = a.offer(uri)
    assert report.objects_written == 5  # 4 chunks and the manifest
    with pytest.raises(ContentNotFoundError):
        b.store.load_file(uri)
    with open(b.load_file(uri), "rb") as f:
        assert f.read() == data

    # a pure result: computed on a, published, served to b without computing
    before = computed["squares"]
    with a:
        assert squares(5) == [0, 1, 4, 9, 16]
    assert remote.has_result_record(squares.task_id(5))
    with b:
        assert squares(5) == [0, 1, 4, 9, 16]
        from kachery_tasks.runtime import cache

        row = cache.current().records.result(squares.task_id(5))
    assert computed["squares"] == before + 1
    assert row.node == a.id

    # a feed: appended on a, pushed, read (verified) on b
    feed = a.create_feed("notes")
    feed.append({"unit": 3, "label": "noise"})
    pushed, _ = a.sync_feeds()
    assert pushed.messages == 1
    copy = b.load_feed(feed.uri)
    assert not copy.writable and [m.body for m in copy.read()] == [{"unit": 3, "label": "noise"}]

    # a zarr array: stored on a, offered whole, read lazily on b
    arr = np.arange(5000, dtype="f8").reshape(50, 100)
    with a:
        zuri = kachery.store_zarr(arr, chunks=(10, 100))
    a.offer(zuri)
    with b:
        np.testing.assert_array_equal(kachery.load_zarr(zuri)[:], arr)

    assert dict(os.environ) == env
    assert default.store.index.stored_bytes() == (0, 0)  # nothing reached the default node
    assert not default.list_feeds()


def test_module_functions_act_on_the_innermost_node(two_nodes):
    a, b, _ = two_nodes
    with a:
        uri = kachery.store_text("in a")
        with b:
            assert current_node() is b
            with pytest.raises(ContentNotFoundError):
                b.store.load_file(uri)
        assert current_node() is a
        assert kachery.load_text(uri) == "in a"
    assert current_node() is default_node()
    with pytest.raises(ContentNotFoundError):
        kachery.load_text(uri)  # the default node has no remote


def test_a_block_in_one_thread_does_not_move_another_thread(two_nodes):
    a, _, _ = two_nodes
    inside, seen = threading.Event(), []

    def other() -> None:
        inside.wait(5)
        seen.append(current_node())

    t = threading.Thread(target=other)
    t.start()
    with a:
        inside.set()
        t.join(5)
    assert seen == [default_node()]


def test_nodes_are_kept_per_directory_and_remotes(tmp_path):
    assert kachery.node(tmp_path / "x") is kachery.node(tmp_path / "x")
    with_bucket = kachery.node(tmp_path / "x", remotes=[f"file://{tmp_path}/b"])
    assert with_bucket is not kachery.node(tmp_path / "x")
    assert with_bucket.store is kachery.node(tmp_path / "x").store  # one store per directory
    assert kachery.node() is current_node()


def test_a_node_pickles_to_the_same_directory_and_remotes(two_nodes):
    a, _, remote = two_nodes
    back = pickle.loads(pickle.dumps(a))
    assert back is a  # the same process keeps one node per directory and remotes
    assert [r.url for r in back.remotes] == [remote.url]


def test_remotes_come_from_the_configuration_when_not_given(tmp_path, monkeypatch):
    n = kachery.node(tmp_path / "c")
    assert n.remotes == []
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", f"file://{tmp_path}/shared")
    assert [r.url for r in n.remotes] == [f"file://{tmp_path}/shared"]


def test_content_found_nowhere_names_every_remote_asked(tmp_path):
    n = kachery.node(tmp_path / "n", remotes=[f"file://{tmp_path}/one", f"file://{tmp_path}/two"])
    with pytest.raises(ContentNotFoundError, match=r"one.*two"):
        n.load_file("sha256://" + "0" * 64)


def test_a_feed_of_another_node_is_pulled_only_through_the_remotes(two_nodes, tmp_path):
    a, _, _ = two_nodes
    feed = a.create_feed()
    feed.append(1)
    a.sync_feeds()
    lonely = kachery.node(tmp_path / "lonely")  # no remotes
    with pytest.raises(FeedNotFoundError):
        lonely.load_feed(feed.uri)


def test_a_result_record_written_first_stays(two_nodes):
    a, b, remote = two_nodes
    with a:
        squares(7)
    tid = squares.task_id(7)
    with open(f"{remote.bucket.url[7:]}/{result_key(tid)}", "rb") as f:
        first = f.read()
    with b:
        squares.recompute(7)  # b computes it too, and publishes nothing over a's record
    with open(f"{remote.bucket.url[7:]}/{result_key(tid)}", "rb") as f:
        assert f.read() == first


def test_a_node_is_usable_as_a_remote_free_node_object():
    n = Node()
    assert n.path == default_node().path and n.remotes == []


def test_remotes_listed_in_the_node_directory_follow_the_configured_bucket(tmp_path, monkeypatch):
    n = kachery.node(tmp_path / "d")
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", f"file://{tmp_path}/configured")
    assert n.add_remote_url(f"file://{tmp_path}/listed")
    assert not n.add_remote_url(f"file://{tmp_path}/listed")  # listed once
    assert n.add_remote_url(f"file://{tmp_path}/configured")  # already first: not twice
    assert [r.url for r in n.remotes] == [f"file://{tmp_path}/configured",
                                         f"file://{tmp_path}/listed"]
    again = Node(tmp_path / "d")  # another process sees the same list
    assert again.listed_remote_urls() == [f"file://{tmp_path}/listed",
                                         f"file://{tmp_path}/configured"]
    assert n.remove_remote_url(f"file://{tmp_path}/listed")
    assert not n.remove_remote_url(f"file://{tmp_path}/listed")
    assert [r.url for r in again.remotes] == [f"file://{tmp_path}/configured"]
    assert (tmp_path / "d" / "remotes.txt").read_text().startswith("# Remotes this node")


def test_a_bad_listed_remote_is_a_clear_error(tmp_path):
    n = kachery.node(tmp_path / "e")
    (tmp_path / "e" / "remotes.txt").write_text("nosuch://x\n")
    with pytest.raises(ConfigError, match=r"remotes.txt: unknown remote 'nosuch://x'"):
        assert n.remotes


def test_content_found_nowhere_says_why_a_remote_could_not_help(tmp_path):
    from kachery_tasks.remotes.base import Remote

    class Explains(Remote):
        url = "explains:"

        def fetch_content(self, store, uri, progress=None):
            raise ContentNotFoundError(f"{uri} cannot be asked here: no member is online")

    n = Node(tmp_path / "f", remotes=[f"file://{tmp_path}/one", Explains()])
    with pytest.raises(ContentNotFoundError) as e:
        n.load_file("sha256://" + "0" * 64)
    assert str(e.value) == (
        f"sha256://{'0' * 64} is neither in this node's store nor in any of its remotes "
        f"(file://{tmp_path}/one, explains:); sha256://{'0' * 64} cannot be asked here: no "
        "member is online")


def test_an_array_s_blobs_missing_from_one_remote_come_from_the_next(tmp_path):
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.layout import blob_key
    from kachery_tasks.zarr_arrays import store_zarr

    one, two = f"file://{tmp_path}/one", f"file://{tmp_path}/two"
    a = Node(tmp_path / "a", remotes=[one, two])
    with a:
        uri = store_zarr(np.arange(16, dtype="i4").reshape(4, 4), chunks=(2, 2))
    a.offer(uri)
    from kachery_tasks.storage.zarr_index import read_index_file

    blobs = sorted(set(read_index_file(a.store.load_file(uri), uri).values()))
    open_bucket(one).delete(blob_key(blobs[0]))  # the first remote lacks one blob

    b = Node(tmp_path / "b", remotes=[one, two])
    assert b.fetch_members(uri) == len(blobs)
    assert all(b.store.has(f"sha256://{h}") for h in blobs)
    with pytest.raises(ContentNotFoundError):  # found nowhere: still an error
        Node(tmp_path / "c", remotes=[one]).fetch_members(uri)
