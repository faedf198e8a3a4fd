"""Feeds through a bucket: segments pushed by one node, pulled and verified by another."""

import json

import pytest

import kachery_tasks as feeds
from kachery_tasks.errors import FeedNotFoundError, FeedVerificationError
from kachery_tasks.feeds import bucket as segments
from kachery_tasks.feeds.bucket import bucket_feed_ids
from kachery_tasks.nodes import Node, current_node
from kachery_tasks.storage.buckets import open_bucket


def push_feed(bucket, uri):
    return segments.push_feed(current_node().feeds, bucket, feeds.parse_feed_uri(uri).feed_id)


def pull_feed(bucket, feed_id):
    return segments.pull_feed(current_node().feeds, bucket, feed_id)


def sync_feeds(bucket):
    return Node(current_node().path, [bucket.url]).sync_feeds()


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    def use(name):
        monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / name))

    return use


def test_push_then_pull_only_what_is_new(tmp_path, two_nodes):
    bucket = open_bucket(f"file://{tmp_path}/bucket")
    two_nodes("a")
    feed = feeds.create_feed("curation")
    sub = feed.subfeed("unit-labels")
    sub.append_many([{"unit": i, "label": "noise"} for i in range(5)])
    assert push_feed(bucket, feed.uri).messages == 5
    assert push_feed(bucket, feed.uri).segments == 0  # nothing new
    two_nodes("b")
    assert pull_feed(bucket, feed.id).messages == 5
    copy = feeds.load_feed(feed.uri)
    assert not copy.writable
    assert [m.body["unit"] for m in copy.subfeed("unit-labels").read()] == [0, 1, 2, 3, 4]
    two_nodes("a")
    sub.append_many([{"unit": i} for i in range(5, 8)])
    assert push_feed(bucket, feed.uri).messages == 3
    keys = list(bucket.list(f"feeds/{feed.id}/"))
    assert [k.rsplit("/", 1)[1] for k in keys] == [
        "000000000000-000000000004.jsonl",
        "000000000005-000000000007.jsonl",
    ]
    two_nodes("b")
    fetched = []
    real_get = bucket.get
    bucket.get = lambda key, *a: fetched.append(key) or real_get(key, *a)
    report = pull_feed(bucket, feed.id)
    bucket.get = real_get
    assert report.messages == 3 and fetched == [keys[1]]
    assert feeds.load_feed(feed.uri).subfeed("unit-labels").count() == 8


def test_tampered_segment_is_rejected(tmp_path, two_nodes):
    bucket = open_bucket(f"file://{tmp_path}/bucket")
    two_nodes("a")
    feed = feeds.create_feed()
    feed.subfeed("s").append_many([{"n": i} for i in range(3)])
    push_feed(bucket, feed.uri)
    key = next(iter(bucket.list("feeds/")))
    lines = bucket.get(key).split(b"\n")
    msg = json.loads(lines[1])
    msg["body"] = {"n": 99}
    lines[1] = json.dumps(msg).encode()
    bucket.delete(key)
    bucket.put(key, b"\n".join(lines))
    two_nodes("b")
    with pytest.raises(FeedVerificationError, match="seq 1"):
        pull_feed(bucket, feed.id)
    assert feeds.load_feed(feed.uri).subfeed("s").count() == 1  # nothing after the bad one


def test_sync_pushes_own_and_pulls_others(tmp_path, two_nodes):
    bucket = open_bucket(f"file://{tmp_path}/bucket")
    two_nodes("a")
    fa = feeds.create_feed("a")
    fa.append({"from": "a"})
    sync_feeds(bucket)
    two_nodes("b")
    fb = feeds.create_feed("b")
    fb.append({"from": "b"})
    pushed, pulled = sync_feeds(bucket)
    assert pushed.feeds == {fb.id} and pulled.feeds == {fa.id}
    assert set(bucket_feed_ids(bucket)) == {fa.id, fb.id}
    two_nodes("a")
    sync_feeds(bucket)
    assert [m.body for m in feeds.load_feed(fb.uri).read()] == [{"from": "b"}]


def test_load_feed_pulls_from_the_configured_bucket(tmp_path, two_nodes, monkeypatch):
    url = f"file://{tmp_path}/bucket"
    two_nodes("a")
    feed = feeds.create_feed()
    feed.append({"n": 1})
    push_feed(open_bucket(url), feed.uri)
    two_nodes("b")
    with pytest.raises(FeedNotFoundError):
        feeds.load_feed(feed.uri)
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", url)
    assert [m.body for m in feeds.load_feed(feed.uri).read()] == [{"n": 1}]


def test_sync_command(tmp_path, two_nodes, run_cli):
    url = f"file://{tmp_path}/bucket"
    two_nodes("a")
    feeds.create_feed().append({"n": 1})
    r = run_cli("sync", "--bucket", url, env={"KACHERY_TASKS_DIR": str(tmp_path / "a")})
    assert r.returncode == 0, r.stderr
    assert b"pushed 1 messages of 1 feeds" in r.stdout
    r = run_cli("sync", "--bucket", url, env={"KACHERY_TASKS_DIR": str(tmp_path / "b")})
    assert r.returncode == 0 and b"pulled 1 messages of 1 feeds" in r.stdout


def test_the_bucket_is_consulted_only_for_feeds_of_other_nodes(tmp_path, two_nodes, monkeypatch):
    """Only the key holder appends, so its own feed is never pulled; exporting and
    pushing work on this node's copy as it is."""
    from kachery_tasks.feeds import bucket as bucket_mod

    url = f"file://{tmp_path}/bucket"
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", url)
    pulls: list[str] = []
    real_pull = bucket_mod.pull_feed
    monkeypatch.setattr(bucket_mod, "pull_feed",
                        lambda s, b, f: pulls.append(f) or real_pull(s, b, f))
    two_nodes("a")
    feed = feeds.create_feed("mine")
    feed.subfeed("s").append_many([1, 2, 3])
    feeds.load_feed(feed.uri)
    feeds.load_subfeed(feed.uri + "/s")
    feed.export(tmp_path / "mine.jsonl")
    push_feed(open_bucket(url), feed.uri)
    assert pulls == []
    two_nodes("b")
    assert [m.body for m in feeds.load_subfeed(feed.uri + "/s").read()] == [1, 2, 3]
    assert pulls == [feed.id]  # another node's feed: fetched from the bucket
