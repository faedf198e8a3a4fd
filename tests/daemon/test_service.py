"""NodeDaemon: the channel services of ``kachery-tasks node start``, in this process.

Real parts: the embedded broker with channel admission (in a thread), the SDK,
a file:// bucket.
"""

from __future__ import annotations

import time

import pytest

from kachery_tasks.daemon.service import NodeDaemon
from kachery_tasks.errors import DaemonError
from kachery_tasks.network.broker import BrokerThread
from kachery_tasks.network.channels import ChannelAdmission, ChannelStore, Invite
from kachery_tasks.network.channels.membership import add_node, change_members, remove_node
from tests.network.channels.conftest import ALL, Lab, wait_for


def test_status_says_who_this_node_is_what_it_serves_and_who_is_online(lab):
    a = lab.add("a")
    b = lab.add("b", frozenset({"download"}))
    daemon = lab.daemon("a")
    lab.daemon("b")
    wait_for(lambda: all(m["online"] for m in daemon.status()["channels"][0]["members"]))
    b.load_file(a.store_bytes(b"asked by b"))
    status = daemon.status()
    assert status["node"] == {"id": a.id, "label": "a", "path": str(a.path)}
    [channel] = status["channels"]
    config = lab.owner.trusted_config()
    assert channel == {
        "name": "lab", "key": lab.owner.key, "owner": lab.owner.owner, "version": 2,
        "pubsub": config.pubsub, "bucket": config.bucket, "connected": True,
        "detail": "connected",
        "members": [
            {"node": a.id, "label": "a", "permissions": list(ALL_ORDERED), "online": True,
             "provides": []},
            {"node": b.id, "label": "b", "permissions": ["download"], "online": True,
             "provides": []},
        ]}
    [request] = status["requests"]
    assert request["type"] == "request_file" and request["from"] == b.id
    assert request["to"] == a.id and request["status"] == "answered"
    assert request["detail"] == "sent 10 B inline"


ALL_ORDERED = ("download", "upload", "request_tasks", "process_tasks", "read_feeds")


def test_subscribers_get_events_until_they_unsubscribe(lab):
    a = lab.add("a")
    b = lab.add("b")
    daemon = lab.daemon("a")
    events = []
    unsubscribe = daemon.subscribe(events.append)
    b.load_file(a.store_bytes(b"event"))
    wait_for(lambda: any(e["type"] == "request" and e["request"]["status"] == "answered"
                         for e in events))
    lab.add("c")  # a config change, announced
    lab.change(add_node("cc" * 32, "later", frozenset()))
    wait_for(lambda: any(e["type"] == "config" and e["version"] == 4 for e in events))
    unsubscribe()
    count = len(events)
    b.load_file(a.store_bytes(b"after"))
    time.sleep(0.2)
    assert len(events) == count


def test_a_second_daemon_on_the_same_node_refuses_to_start(lab):
    a = lab.add("a")
    first = lab.daemon("a")
    assert (a.path / "daemon" / "pid").read_text().strip().isdigit()
    with pytest.raises(DaemonError, match="a node daemon already serves"):
        NodeDaemon(a).start()
    assert first.status()["channels"][0]["connected"]  # the first one goes on
    first.stop()
    assert not (a.path / "daemon" / "pid").exists()


def test_channels_joined_and_left_while_running_are_picked_up(lab, tmp_path):
    lab.add("a")
    b = lab.add("b")
    lab.daemon("a")
    other = Lab(tmp_path / "other", lab.pubsub_url)
    other.add("owner2")
    daemon = lab.daemon("b", rescan_every=0.1)
    assert [c["name"] for c in daemon.status()["channels"]] == ["lab"]
    config = change_members(other.owner, add_node(b.id, "b", ALL))
    ChannelStore(b.dir).add(Invite.of(config), config)
    wait_for(lambda: any(c["name"] == "lab" and c["key"] == other.owner.key
                         and c["connected"] for c in daemon.status()["channels"]))
    ChannelStore(b.dir).remove(ChannelStore(b.dir).find(f"{lab.owner.key}"))
    wait_for(lambda: [c["key"] for c in daemon.status()["channels"]] == [other.owner.key])
    other.close()


def test_a_node_not_yet_a_member_is_served_once_it_is_added(lab, tmp_path):
    lab.add("a")
    b = lab.add("b")
    lab.change(remove_node(b.id))
    daemon = lab.daemon("b", rescan_every=0.1)
    [channel] = daemon.status()["channels"]
    assert not channel["connected"] and "is not a member of lab" in channel["detail"]
    lab.change(add_node(b.id, "b", ALL))
    wait_for(lambda: daemon.status()["channels"][0]["connected"], timeout=20)


def test_a_node_removed_and_added_again_is_served_again(lab):
    lab.add("a")
    b = lab.add("b")
    daemon = lab.daemon("b", rescan_every=0.1)
    lab.change(remove_node(b.id))  # the broker disconnects b for good
    wait_for(lambda: not daemon.status()["channels"][0]["connected"], timeout=20)
    lab.change(add_node(b.id, "b", ALL))
    wait_for(lambda: daemon.status()["channels"][0]["connected"], timeout=30)


def test_after_a_broker_restart_the_daemon_answers_again(tmp_path):
    admission = ChannelAdmission()
    broker = BrokerThread(authorize=admission.authorize, observe=admission.observe).start()
    port = broker.broker.port
    lab = Lab(tmp_path, broker.url)
    try:
        a = lab.add("a")
        b = lab.add("b")
        lab.daemon("a")
        assert b.load_bytes(a.store_bytes(b"before")) == b"before"
        broker.stop()
        admission = ChannelAdmission()
        broker = BrokerThread(port=port, authorize=admission.authorize,
                              observe=admission.observe).start()
        uri = a.store_bytes(b"after the restart")
        wait_for(lambda: _loads(b, uri), timeout=30, what="an answer after the restart")
    finally:
        lab.close()
        broker.stop()


def _loads(node, uri) -> bool:
    from kachery_tasks.errors import KacheryError

    try:
        return node.load_bytes(uri) == b"after the restart"
    except KacheryError:
        return False


def _provides(daemon, node_id):
    for member in daemon.status()["channels"][0]["members"]:
        if member["node"] == node_id and member["online"]:
            return member["provides"]
    return None


def test_a_providing_daemon_announces_its_tasks_and_serves_them(lab):
    from kachery_tasks.network.channels.requests import Asker
    from kachery_tasks.network.tasks import Provided, protocol
    from tests.network.tasks.remote_tasks import square

    a = lab.add("a")
    lab.add("b")
    c = lab.add("c", frozenset({"download", "request_tasks"}))  # may not process tasks
    provided = Provided.from_modules(["tests.network.tasks.remote_tasks"])
    lab.daemon("a", provided=provided)
    lab.daemon("c", provided=provided)
    watcher = lab.daemon("b")
    provides = wait_for(lambda: _provides(watcher, a.id), what="a announcing its tasks")
    assert {p["name"]: p["code_hash"] for p in provides}[square.name] == square.code_hash
    assert provides == provided.describe()
    wait_for(lambda: _provides(watcher, c.id) is not None, what="c online")
    assert _provides(watcher, c.id) == []  # without process_tasks it provides nothing
    session = lab.session("b")
    pending = Asker(session).ask(
        protocol.TASK, protocol.request_body(a.id, square.prepare(12).to_bytes()),
        asked={a.id}, online=2, timeout=20, what="square(12)")
    assert pending.final.type == "task_finished"
    assert lab.remote("b").bucket.has_result_record(square.task_id(12))


def test_a_daemon_looks_at_its_feeds_often_only_while_a_member_watches_one(lab):
    a = lab.add("a")
    b = lab.add("b", frozenset({"read_feeds"}))
    daemon = lab.daemon("a")
    lab.daemon("b")
    feed = a.create_feed("news")
    feed.subfeed("s").append({"n": 0})
    wait_for(lambda: not daemon._announcing())  # nobody watches: it looks twice a second
    b.load_feed(feed.uri)  # b's daemon says in its presence that it follows the feed
    wait_for(lambda: daemon._announcing())
