"""ChannelRemote: content, results and feeds asked of a channel, answered by a member's daemon.

Real parts: the embedded broker with channel admission (in a thread), the ably
SDK, a file:// bucket, and NodeDaemon serving the other member.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections import Counter
from types import SimpleNamespace

import pytest

import kachery_tasks as kachery
from kachery_tasks.errors import (
    ChannelTimeoutError,
    ContentNotFoundError,
    CorruptContentError,
)
from kachery_tasks.network.channels import ChannelStore, parse_message
from kachery_tasks.network.channels.files import FILE
from kachery_tasks.network.channels.livefeeds import FeedFollower
from kachery_tasks.network.channels.membership import set_permissions
from kachery_tasks.network.channels.messages import seal_message
from kachery_tasks.network.channels.requests import Responder
from kachery_tasks.nodes import Node
from kachery_tasks.remotes.bucket import BucketRemote
from kachery_tasks.storage.sync import in_bucket
from kachery_tasks.testing.remotes import RemoteContract
from tests.network.channels.conftest import ALL, Lab, wait_for


class TestChannelRemote(RemoteContract):
    """The remote contract, with node 'server' (the owner) serving through its daemon."""

    @pytest.fixture
    def remote(self, tmp_path, admitting_broker):
        broker, _ = admitting_broker
        lab = Lab(tmp_path / "lab", broker.url)
        lab.add("server")
        lab.add("asker")
        lab.daemon("server")
        yield lab.remote("asker")
        lab.close()

    def test_content_only_the_serving_member_holds_arrives_verified(self, remote, nodes):
        _, asking = nodes
        server = Node(remote.node.path.parent / "server")
        small = server.store_bytes(b"held by the server only")
        big_data = os.urandom(200_000)
        big = server.store_bytes(big_data)
        with open(remote.fetch_content(asking.store, small), "rb") as f:
            assert f.read() == b"held by the server only"
        with open(remote.fetch_content(asking.store, big), "rb") as f:
            assert f.read() == big_data
        assert not remote.has_content(small[9:73])  # it came inline
        assert remote.has_content(big[9:73])  # it came through the bucket


# ---------------------------------------------------------------- content


@pytest.fixture
def ab(lab):
    """Nodes a (the owner) and b, members with every permission; a's daemon runs."""
    lab.add("a")
    lab.add("b")
    lab.daemon("a")
    return lab.nodes["a"], lab.nodes["b"]


def test_a_node_loads_what_only_another_member_holds(ab, lab, caplog):
    a, b = ab
    small = a.store_bytes(b"x" * 1000, label="small.txt")
    big_data = os.urandom(5 * 65536 + 7)
    big = a.store_bytes(big_data, label="big.bin")
    # the public functions of the current node walk its remotes
    with caplog.at_level(logging.INFO, "kachery_tasks.network.channels"), b:
        assert kachery.load_bytes(small) == b"x" * 1000
        assert kachery.load_bytes(big) == big_data
    assert b.store.info(big).chunks == 6 and b.store.info(small).label == "small.txt"
    assert "uploaded by" in caplog.text  # progress reached the asker
    bucket = lab.remote("b").bucket.bucket
    assert not in_bucket(bucket, small[9:73]) and in_bucket(bucket, big[9:73])


def test_with_inline_answers_off_small_content_goes_through_the_bucket(lab):
    lab.add("a")
    b = lab.add("b")
    lab.daemon("a", inline_max=0)
    uri = lab.nodes["a"].store_bytes(b"small")
    with open(b.load_file(uri), "rb") as f:
        assert f.read() == b"small"
    assert lab.remote("b").has_content(uri[9:73])


def test_content_no_member_holds_is_not_found_at_once(ab, lab):
    _, b = ab
    lab.add("c")
    lab.daemon("c")
    with pytest.raises(ContentNotFoundError, match=(
            r"nor held by any of the 2 members online that may upload \(each answered "
            "file_absent\\)")):
        b.load_file("sha256://" + "1" * 64)


def test_without_a_daemon_online_there_is_nobody_to_ask(lab):
    lab.add("a")
    b = lab.add("b")
    with pytest.raises(ContentNotFoundError, match="no other member is online"):
        b.load_file("sha256://" + "2" * 64)


def test_a_daemon_that_may_not_upload_is_not_asked(lab):
    lab.add("a", ALL - {"upload"})
    b = lab.add("b")
    lab.daemon("a")
    uri = lab.nodes["a"].store_bytes(b"a has it but may not send it")
    with pytest.raises(ContentNotFoundError, match="runs a daemon allowed to upload"):
        b.load_file(uri)


def test_a_member_without_download_gets_a_clear_error_and_its_requests_are_dropped(
        lab, caplog):
    a = lab.add("a")
    b = lab.add("b", ALL - {"download"})
    lab.daemon("a")
    uri = a.store_bytes(b"not for b")
    with pytest.raises(ContentNotFoundError, match=(
            "this node may not ask its members: this node may not ask channel lab for files "
            r"\(it lacks the download permission")):
        b.load_file(uri)
    # a request b signs and publishes anyway is dropped by a's daemon, unanswered
    session = lab.session("b")
    answers = []
    session.on("file_uploaded", answers.append)
    with caplog.at_level(logging.WARNING, "kachery_tasks.network.channels"):
        session.publish("request_file", {"uri": uri, "request": "12" * 16})
        wait_for(lambda: "the sender lacks the download permission" in caplog.text)
    time.sleep(0.3)
    assert answers == []


def test_a_member_that_never_answers_makes_a_timeout_that_says_who_answered(lab):
    lab.add("a")
    b = lab.add("b")
    lab.add("c")
    lab.daemon("a")
    lab.session("c", daemon=True)  # present as a daemon, but never answers
    lab.remote("b").timeout = 1.0
    with pytest.raises(ChannelTimeoutError) as e:
        b.load_file("sha256://" + "3" * 64)
    assert str(e.value).startswith(
        f"no member of channel lab answered the request for sha256://{'3' * 64} within "
        "1 s: 2 members online, 2 of them may answer, 1 answered (1 file_absent)")


def test_inline_bytes_that_do_not_match_their_id_are_refused(lab):
    lab.add("a")
    b = lab.add("b")
    lab.add("c")
    liar = lab.session("c", daemon=True, start=False)
    Responder(liar, FILE, lambda i: i.answer("file_uploaded", {
        "sha256": "4" * 64, "size": 4, "data": base64.b64encode(b"fake").decode()}))
    liar.start()
    with pytest.raises(CorruptContentError, match="do not match its id; nothing was stored"):
        b.load_file("sha256://" + "4" * 64)
    assert not b.store.has("sha256://" + "4" * 64)


def test_a_channel_left_is_no_longer_asked(lab):
    lab.add("a")
    b = lab.add("b")
    remote = lab.remote("b")
    ChannelStore(b.dir).remove(ChannelStore(b.dir).find("lab"))
    with pytest.raises(ContentNotFoundError, match="has not joined a channel called"):
        remote.fetch_content(b.store, "sha256://" + "5" * 64)
    assert remote.feed_ids() == [] and remote.get_result_records(["x"]) == {}


# ---------------------------------------------------------------- results

calls: Counter[str] = kachery.untracked(Counter())


@kachery.pure(name="tests.channels.double")
def double(x: int) -> int:
    calls["double"] += 1
    return 2 * x


def test_only_members_that_process_tasks_and_this_node_are_trusted_with_results(lab):
    lab.add("a")
    lab.add("b")
    worker = lab.add("w", frozenset({"download"}))
    lab.daemon("b")  # adopts config changes as they are announced
    remote = lab.remote("b")
    assert remote.trusts_result_signer(lab.nodes["b"].id)  # itself
    assert remote.trusts_result_signer(lab.nodes["a"].id)  # process_tasks
    assert not remote.trusts_result_signer(worker.id)  # a member without process_tasks
    assert not remote.trusts_result_signer("e" * 64)  # not a member
    lab.change(set_permissions(worker.id, frozenset({"process_tasks"})))
    wait_for(lambda: remote.trusts_result_signer(worker.id), what="trusting the new version")


def test_a_record_planted_by_a_non_member_is_ignored(lab, tmp_path):
    a = lab.add("a")
    b = lab.add("b")
    eve = Node(tmp_path / "eve", remotes=[lab.bucket_url])  # can write to the bucket
    before = calls["double"]
    with eve:
        assert double(21) == 42  # computed, and its signed record published to the bucket
    assert BucketRemote(lab.bucket_url).has_result_record(double.task_id(21))
    with b:
        assert double(21) == 42
    assert calls["double"] == before + 2  # b computed it again: eve's record was ignored
    with a:
        double(5)  # a member allowed to process tasks publishes through the channel
    with b:
        assert double(5) == 10
    assert calls["double"] == before + 3  # b was served a's result


# ------------------------------------------------------------------ feeds


def test_a_message_appended_on_one_node_reaches_a_watcher_on_another(lab):
    a = lab.add("a")
    b = lab.add("b")
    lab.daemon("a")
    lab.daemon("b")
    feed = a.create_feed("news")
    feed.subfeed("s").append({"n": 0})
    mine = b.load_feed(feed.uri)  # found nowhere: asked live, pushed by a's daemon
    assert [m.body for m in mine.subfeed("s").read()] == [{"n": 0}]
    for n in range(1, 4):
        feed.subfeed("s").append({"n": n})
        got = mine.subfeed("s").watch(n, timeout=10)
        assert [m.body for m in got] == [{"n": n}]
    big = [{"blob": "y" * 1000, "i": i} for i in range(40)]  # 40 KB: through the bucket
    feed.subfeed("t").append_many(big)
    assert [m.body for m in mine.subfeed("t").watch(0, timeout=10)] == big


def test_a_feed_followed_while_its_daemon_was_down_catches_up(lab):
    a = lab.add("a")
    b = lab.add("b")
    lab.daemon("a")
    feed = a.create_feed()
    feed.subfeed("s").append(0)
    a.sync_feeds()  # in the channel's bucket
    mine = b.load_feed(feed.uri)
    feed.subfeed("s").append_many([1, 2, 3])  # nobody follows it live yet
    time.sleep(0.3)
    assert mine.subfeed("s").count() == 1
    lab.daemon("b")  # b's daemon says it follows the feed: a pushes it
    assert [m.body for m in mine.subfeed("s").watch(1, timeout=10)] == [1, 2, 3]


def test_forged_feed_lines_are_refused(lab, caplog):
    a = lab.add("a")
    b = lab.add("b")
    lab.add("c")
    lab.daemon("b")
    feed = a.create_feed()
    feed.subfeed("s").append({"pay": 1})
    a.sync_feeds()
    b.load_feed(feed.uri)
    feed.subfeed("s").append({"pay": 2})  # on a only
    line = next(feed.subfeed("s").export_lines(1, 2)).decode()
    forged = line.replace('"pay":2', '"pay":2000')  # c claims a wrote this
    assert forged != line
    with caplog.at_level(logging.WARNING, "kachery_tasks.network.channels"):
        lab.session("c").publish("feed_messages", {"feed": feed.id, "subfeed": "s",
                                                   "start": 1, "count": 1, "lines": [forged]})
        wait_for(lambda: "refused feed messages from" in caplog.text)
    assert [m.body for m in b.load_feed(feed.uri).subfeed("s").read()] == [{"pay": 1}]


def test_a_gap_in_announced_messages_is_filled_from_the_bucket(lab):
    a = lab.add("a")
    b = lab.add("b")
    feed = a.create_feed()
    feed.subfeed("s").append_many([0, 1, 2])
    a.sync_feeds()
    b.load_feed(feed.uri)
    feed.subfeed("s").append_many([3, 4, 5])
    a.sync_feeds()
    feed.subfeed("s").append(6)
    line = next(feed.subfeed("s").export_lines(6, 7)).decode()
    channel = lab.owner.pubsub_name
    msg = parse_message(seal_message("feed_messages", channel, {
        "feed": feed.id, "subfeed": "s", "start": 6, "count": 1, "lines": [line]},
        a.key).to_dict())
    follower = FeedFollower(b.feeds, wanted=lambda f: f == feed.id)
    try:
        session = SimpleNamespace(channel=SimpleNamespace(name="lab"),
                                  on=lambda type, handler: handler(msg))
        follower.attach(session, lambda: lab.remote("b").bucket)  # the message arrives now
        mine = b.load_feed(feed.uri).subfeed("s")
        assert [m.body for m in mine.watch(6, timeout=10)] == [6]  # 3..5 from the bucket first
        assert [m.body for m in mine.read()] == [0, 1, 2, 3, 4, 5, 6]
    finally:
        follower.close()


def test_the_largest_inline_answer_fits_in_one_message(lab):
    from kachery_tasks.network.channels.files import MAX_INLINE

    a = lab.add("a")
    b = lab.add("b")
    lab.daemon("a", inline_max=MAX_INLINE)
    data = os.urandom(MAX_INLINE)
    uri = a.store_bytes(data)
    assert b.load_bytes(uri) == data
    assert not lab.remote("b").has_content(uri[9:73])  # inline, not through the bucket
