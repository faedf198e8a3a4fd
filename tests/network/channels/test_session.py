"""ChannelSession: a node's live connection to a channel, through the real SDK and broker."""

from __future__ import annotations

import logging
import time

import pytest

from kachery_tasks.errors import ChannelError, ChannelPermissionError, PubSubAuthError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels import ChannelSession, ChannelStore, Invite, seal_message
from kachery_tasks.network.channels.membership import (
    add_node,
    announce,
    change_members,
    create_channel,
    remove_node,
)
from kachery_tasks.testing.pubsub import Inbox
from tests.network.channels.conftest import ALL, config_of, make_node, wait_for
from tests.network.conftest import FAST


@pytest.fixture
def world(tmp_path, admitting_broker):
    """A channel owned by node 'owner', which node 'alice' joined as a member."""
    broker, gate = admitting_broker
    owner, owner_key = make_node(tmp_path, "owner")
    alice, alice_key = make_node(tmp_path, "alice")
    lab = create_channel(owner, "lab", f"file://{tmp_path}/bucket", broker.url, "owner")
    v2 = change_members(lab, add_node(alice_key.public_hex, "alice", ALL))
    joined = ChannelStore(alice).add(Invite.of(v2), v2)
    sessions = []

    def session(channel, key, **kw) -> ChannelSession:
        s = ChannelSession(channel, key, **{**FAST, **kw}).start()
        sessions.append(s)
        return s

    yield type("World", (), dict(broker=broker, gate=gate, lab=lab, owner_key=owner_key,
                                  joined=joined, alice_key=alice_key, session=session))
    for s in sessions:
        s.close()


def test_sessions_see_each_other_and_exchange_messages(world):
    owner = world.session(world.lab, world.owner_key)
    alice = world.session(world.joined, world.alice_key)
    assert alice.config.version == 2 and alice.label == "alice"
    wait_for(lambda: set(owner.online()) == {world.owner_key.public_hex,
                                             world.alice_key.public_hex})
    assert owner.online()[world.alice_key.public_hex] == {
        "label": "alice", "node": world.alice_key.public_hex}
    inbox = Inbox()
    owner.on("request_file", inbox)
    sent = alice.publish("request_file", {"uri": "sha256://ab"})
    got = inbox.wait_for(1)[0]
    assert (got.sender, got.body, got.nonce) == (world.alice_key.public_hex,
                                                 {"uri": "sha256://ab"}, sent.nonce)


def test_a_session_starts_from_the_newest_config_in_the_bucket(world):
    v3 = change_members(world.lab, add_node("0c" * 32, "carol", frozenset()))
    assert world.joined.trusted_config().version == 2
    alice = world.session(world.joined, world.alice_key)
    assert alice.config == v3 and world.joined.trusted_config() == v3


def test_a_non_member_cannot_start_a_session(world, tmp_path):
    node, key = make_node(tmp_path, "eve")
    config = world.lab.trusted_config()
    joined = ChannelStore(node).add(Invite.of(config), config)
    with pytest.raises(ChannelPermissionError, match=r"is not a member of lab.*add-node lab"):
        ChannelSession(joined, key, **FAST).start()


def test_a_running_session_adopts_a_notice_of_a_newer_config(world):
    alice = world.session(world.joined, world.alice_key)
    adopted = Inbox()
    alice.on_config(adopted)
    notices = Inbox()
    alice.on("channel_config", notices)
    carol = "0c" * 32
    v3 = change_members(world.lab, add_node(carol, "carol", frozenset({"upload"})))
    assert announce(v3, world.owner_key, **FAST) is None
    assert adopted.wait_for(1)[0] == v3
    assert alice.config == v3 and world.joined.trusted_config() == v3
    assert notices.wait_for(1)[0].sender == world.owner_key.public_hex
    assert announce(v3, world.owner_key, **FAST) is None  # the same again: nothing
    assert adopted.quiet(0.5) == [v3]


def test_a_notice_that_does_not_verify_is_ignored(world, caplog):
    alice = world.session(world.joined, world.alice_key)
    owner = world.session(world.lab, world.owner_key)
    forged = config_of(KeyPair.generate(), {}, version=9, pubsub=world.broker.url)
    with caplog.at_level(logging.WARNING):
        owner.publish("channel_config", {"config": forged.envelope.to_dict()})
        owner.publish("channel_config", {"config": "not a config"})
        wait_for(lambda: caplog.text.count("ignored a channel_config notice") == 2)
    assert alice.config.version == 2


def test_messages_that_do_not_check_out_never_reach_handlers(world, caplog):
    alice = world.session(world.joined, world.alice_key)
    owner = world.session(world.lab, world.owner_key)
    inbox = Inbox()
    alice.on("request_file", inbox)
    stale = seal_message("request_file", alice.pubsub_name, {"uri": "stale"},
                         world.owner_key, now=time.time() - 600)
    with caplog.at_level(logging.WARNING):
        owner.pubsub.publish(owner.pubsub_name, "request_file", stale.to_dict())
        good = owner.publish("request_file", {"uri": "good"})
        owner.pubsub.publish(owner.pubsub_name, "request_file", good.to_dict())  # replayed
        owner.publish("request_file", {"uri": "last"})
        got = inbox.wait_for(2)
    assert [m.body["uri"] for m in inbox.quiet(0.3)] == ["good", "last"]
    assert [m.body["uri"] for m in got] == ["good", "last"]
    assert alice.checker.dropped == {"stale": 1, "replay": 1}


def test_a_member_removed_while_running_is_cut_off(world):
    alice = world.session(world.joined, world.alice_key)
    owner = world.session(world.lab, world.owner_key)
    inbox = Inbox()
    owner.on("request_file", inbox)
    v3 = change_members(world.lab, remove_node(world.alice_key.public_hex))
    assert announce(v3, world.owner_key, **FAST) is None
    wait_for(lambda: alice.pubsub.state in ("failed", "closed"))
    wait_for(lambda: owner.config.version == 3)
    with pytest.raises(PubSubAuthError, match="was removed from channel lab"):
        alice.pubsub.publish(alice.pubsub_name, "request_file", {"uri": "after removal"})
    with pytest.raises(ChannelPermissionError, match=r"this node was removed from channel lab "
                       r"\(config version 3\)"):
        alice.publish("request_file", {"uri": "after removal"})  # it reads why from the bucket
    assert alice.config.version == 3
    assert inbox.quiet(0.3) == []


def test_a_session_not_started_says_so(world):
    session = ChannelSession(world.joined, world.alice_key)
    with pytest.raises(ChannelError, match="not started"):
        session.config  # noqa: B018
    with pytest.raises(ChannelError, match="not started"):
        session.publish("request_file", {})


def test_on_the_ably_service_the_sdk_key_is_used_not_a_node_token(owner_key, monkeypatch):
    from kachery_tasks.network.channels.session import connect_channel_pubsub

    monkeypatch.delenv("ABLY_API_KEY", raising=False)
    monkeypatch.delenv("ABLY_TOKEN", raising=False)
    config = config_of(owner_key, {}, pubsub="ably:")
    with pytest.raises(PubSubAuthError, match="ABLY_API_KEY"):  # no token provider was given
        connect_channel_pubsub(KeyPair.generate(), lambda: config)


def test_a_message_addressed_to_another_member_is_skipped_unchecked(world):
    """An exchange's answer names its reader (``to``), a task request its provider: the
    other members skip it before checking its signature (which costs them as much as the
    reader); the reader checks it as every message is checked."""
    alice = world.session(world.joined, world.alice_key)
    owner = world.session(world.lab, world.owner_key)
    inbox = Inbox()
    alice.on("file_absent", inbox)
    alice.on("request_task", inbox)
    me, other = world.alice_key.public_hex, world.owner_key.public_hex
    stale_to_other = seal_message("file_absent", alice.pubsub_name, {"to": other, "n": 1},
                                  world.owner_key, now=time.time() - 600)
    stale_to_me = seal_message("file_absent", alice.pubsub_name, {"to": me, "n": 2},
                               world.owner_key, now=time.time() - 600)
    owner.pubsub.publish(owner.pubsub_name, "file_absent", stale_to_other.to_dict())
    owner.pubsub.publish(owner.pubsub_name, "file_absent", stale_to_me.to_dict())
    owner.publish("request_task", {"provider": other, "n": 3})  # for the owner: skipped
    owner.publish("file_absent", {"to": me, "n": 4})
    owner.publish("request_task", {"provider": me, "n": 5})
    assert [m.body["n"] for m in inbox.wait_for(2)] == [4, 5]
    assert [m.body["n"] for m in inbox.quiet(0.3)] == [4, 5]
    assert alice.checker.dropped == {"stale": 1}  # only the stale one meant for alice
