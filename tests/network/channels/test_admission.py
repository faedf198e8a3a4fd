"""Broker admission for channels: the authorizer alone, then through the real SDK."""

from __future__ import annotations

import logging
import time

import pytest

from kachery_tasks.errors import ChannelError, ChannelPermissionError, PubSubAuthError, PubSubError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.broker import Grant, TokenExpired
from kachery_tasks.network.channels import ChannelAdmission, make_token, seal_message
from kachery_tasks.network.channels.config import MemberInfo, make_config, seal_config
from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.testing.pubsub import Inbox
from tests.network.channels.conftest import ALL, NOW, config_of
from tests.network.conftest import FAST


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alice():
    return KeyPair.generate()


@pytest.fixture
def bob():
    return KeyPair.generate()


def admission(**kw) -> ChannelAdmission:
    return ChannelAdmission(clock=Clock(), **kw)


# -- the authorizer alone ------------------------------------------------------------


def test_a_member_is_admitted_to_its_channel_only(owner_key, alice):
    config = config_of(owner_key, {alice.public_hex: frozenset()})
    grant = admission().authorize(make_token(alice, config, now=NOW))
    assert grant == Grant(alice.public_hex, frozenset({config.pubsub_name}))


def test_a_non_member_is_refused(owner_key, alice, bob):
    config = config_of(owner_key, {alice.public_hex: ALL}, version=2)
    with pytest.raises(ChannelPermissionError, match=r"not a member of channel lab \(config "
                       r"version 2\): ask its owner to add it"):
        admission().authorize(make_token(bob, config, now=NOW))


def test_the_newest_config_known_decides_and_never_goes_back(owner_key, alice, bob):
    gate = admission()
    v1 = config_of(owner_key, {alice.public_hex: ALL, bob.public_hex: ALL})
    v2 = config_of(owner_key, {alice.public_hex: ALL}, version=2)
    gate.authorize(make_token(bob, v1, now=NOW))
    gate.authorize(make_token(alice, v2, now=NOW))  # the broker learns v2 from alice's token
    assert gate.config(v1.pubsub_name).version == 2
    with pytest.raises(ChannelPermissionError, match="config version 2"):
        gate.authorize(make_token(bob, v1, now=NOW))  # bob's old config does not help him
    assert gate.config(v1.pubsub_name).version == 2


def test_a_newer_version_reports_the_members_it_dropped(owner_key, alice, bob):
    removed = []
    gate = admission(on_removed=lambda *args: removed.append(args))
    v1 = config_of(owner_key, {alice.public_hex: ALL, bob.public_hex: ALL})
    gate.learn(v1)
    gate.learn(config_of(owner_key, {alice.public_hex: ALL}, version=3))
    gate.learn(v1)  # older: nothing happens
    assert removed == [(bob.public_hex, v1.pubsub_name,
                        f"node {bob.public_hex[:16]}... was removed from channel lab (config "
                        "version 3)")]


def test_a_stale_token_is_renewed_once_then_refused_as_a_clock_problem(owner_key, alice, bob):
    clock = Clock()
    gate = ChannelAdmission(clock=clock)
    config = config_of(owner_key, {alice.public_hex: ALL, bob.public_hex: ALL})
    stale = make_token(alice, config, now=NOW - 301)
    with pytest.raises(TokenExpired, match="signed 301 s ago"):
        gate.authorize(stale)
    with pytest.raises(ChannelError, match=r"although a fresh one was asked for.*check the clock"):
        gate.authorize(make_token(alice, config, now=NOW - 400))
    gate.authorize(make_token(alice, config, now=NOW - 299))  # within the window: fine
    with pytest.raises(TokenExpired):  # bob was never told: renewable
        gate.authorize(make_token(bob, config, now=NOW - 1000))
    clock.now += 120  # long after being told, alice's stale token is renewable again
    with pytest.raises(TokenExpired):
        gate.authorize(make_token(alice, config, now=NOW - 400))


def test_a_token_from_the_future_is_refused(owner_key, alice):
    config = config_of(owner_key, {alice.public_hex: ALL})
    with pytest.raises(ChannelError, match="301 s ahead of the broker's clock"):
        admission().authorize(make_token(alice, config, now=NOW + 301))


def test_a_broker_can_serve_chosen_owners_only(owner_key, alice):
    config = config_of(owner_key, {alice.public_hex: ALL})
    admission(owners=[owner_key.public_hex]).authorize(make_token(alice, config, now=NOW))
    with pytest.raises(ChannelPermissionError, match="only the channels of chosen owners"):
        admission(owners=["00" * 32]).authorize(make_token(alice, config, now=NOW))


def notice_of(config, sender: KeyPair) -> dict:
    envelope = seal_message("channel_config", config.pubsub_name,
                            {"config": config.envelope.to_dict()}, sender)
    return {"name": "channel_config", "data": envelope.to_dict(), "encoding": None}


def test_the_broker_learns_from_channel_config_notices(owner_key, alice, caplog):
    gate = admission()
    v1 = config_of(owner_key, {alice.public_hex: ALL})
    gate.learn(v1)
    gate.observe(alice.public_hex, v1.pubsub_name,
                 notice_of(config_of(owner_key, {}, version=2), alice))
    assert gate.config(v1.pubsub_name).version == 2
    with caplog.at_level(logging.INFO):
        forged = config_of(KeyPair.generate(), {}, version=9)
        gate.observe(alice.public_hex, v1.pubsub_name, notice_of(forged, alice))
        other = config_of(owner_key, {}, version=9, name="other")
        gate.observe(alice.public_hex, v1.pubsub_name, notice_of(other, alice))
        gate.observe(alice.public_hex, v1.pubsub_name, {"name": "channel_config",
                                                        "data": "{oops", "encoding": "json"})
        gate.observe(alice.public_hex, v1.pubsub_name, {"name": "request_file", "data": 1})
    assert gate.config(v1.pubsub_name).version == 2
    assert caplog.text.count("ignored a channel_config notice") == 3


# -- through the real SDK ---------------------------------------------------------------


def connect(broker, key, token, **options):
    return connect_pubsub(broker.url, key.public_hex, token, **{**FAST, **options})


def counting(admission_):
    """Wrap the authorizer to count the tokens it is shown."""
    seen = []
    inner = admission_.authorize

    def authorize(token):
        seen.append(token)
        return inner(token)

    admission_.authorize = authorize
    return seen


@pytest.fixture
def broker_and_gate():
    from kachery_tasks.network.broker import BrokerThread

    gate = ChannelAdmission()
    seen = counting(gate)
    with BrokerThread(authorize=lambda t: gate.authorize(t), observe=gate.observe) as broker:
        gate.on_removed = broker.broker.disconnect
        yield broker, gate, seen


def test_a_member_connects_and_uses_its_channel(broker_and_gate, owner_key, alice):
    broker, _, _ = broker_and_gate
    config = config_of(owner_key, {alice.public_hex: ALL}, pubsub=broker.url)
    with connect(broker, alice, lambda: make_token(alice, config)) as client:
        inbox = Inbox()
        client.subscribe(config.pubsub_name, inbox)
        client.enter(config.pubsub_name, {"label": "alice"})
        client.publish(config.pubsub_name, "m", "hello")
        assert inbox.wait_for(1)[0].client_id == alice.public_hex
        other = config_of(owner_key, {}, name="other").pubsub_name
        with pytest.raises(PubSubError, match="may not use channel") as refused:
            client.subscribe(other, inbox)
        assert refused.value.code == 40160


@pytest.mark.parametrize("case", ["non-member", "forged claim", "config of another key"])
def test_refused_clients_fail_at_once_without_retrying(broker_and_gate, owner_key, alice, bob,
                                                       case):
    broker, _, seen = broker_and_gate
    config = config_of(owner_key, {alice.public_hex: ALL}, pubsub=broker.url)
    if case == "non-member":
        key, token, why = bob, make_token(bob, config), "is not a member of channel lab"
    elif case == "forged claim":  # bob signs a claim naming alice
        key, token, why = alice, _claim_by(bob, alice, config), "names another node"
    else:
        impostor = KeyPair.generate()
        fake = config_of(impostor, {bob.public_hex: ALL}, pubsub=broker.url)
        key, token, why = bob, _retarget(make_token(bob, fake), bob, config.pubsub_name), \
            "not signed by the owner"
    with pytest.raises(PubSubAuthError, match=why) as refused:
        connect(broker, key, lambda: token)
    assert refused.value.code == 40101
    time.sleep(3 * FAST["retry_interval"] + 1)
    assert len(seen) == 1  # no retry loop


def _claim_by(signer: KeyPair, named: KeyPair, config) -> str:
    from kachery_tasks.envelopes import seal
    from tests.network.channels.test_tokens import decode, encode

    doc = decode(make_token(named, config))
    doc["claim"] = seal("pubsub-token", doc["claim"]["body"], signer).to_dict()
    return encode(doc)


def _retarget(token: str, key: KeyPair, channel: str) -> str:
    from kachery_tasks.envelopes import seal
    from tests.network.channels.test_tokens import decode, encode

    doc = decode(token)
    doc["claim"] = seal("pubsub-token", {**doc["claim"]["body"], "channel": channel},
                        key).to_dict()
    return encode(doc)


def test_a_stale_claim_is_refused_with_a_clock_message(broker_and_gate, owner_key, alice):
    broker, _, seen = broker_and_gate
    config = config_of(owner_key, {alice.public_hex: ALL}, pubsub=broker.url)
    with pytest.raises(PubSubAuthError, match="check the clock"):
        connect(broker, alice, lambda: make_token(alice, config, now=time.time() - 600))
    assert len(seen) == 2  # the first was renewed once, the second refused for good
    time.sleep(3 * FAST["retry_interval"] + 1)
    assert len(seen) == 2


def test_a_reconnect_with_an_old_token_gets_a_fresh_one(owner_key, alice):
    from kachery_tasks.network.broker import BrokerThread

    clock = Clock(time.time())
    gate = ChannelAdmission(clock=clock)
    seen = counting(gate)
    with BrokerThread(authorize=lambda t: gate.authorize(t)) as broker:
        config = config_of(owner_key, {alice.public_hex: ALL}, pubsub=broker.url)
        with connect(broker, alice, lambda: make_token(alice, config, now=clock.now)) as client:
            inbox = Inbox()
            client.subscribe(config.pubsub_name, inbox)
            clock.now += 400  # the token the SDK holds is now stale
            broker.call(broker.broker.abort_connections)
            deadline = time.monotonic() + 15
            while len(seen) < 3 or client.state != "connected":
                assert time.monotonic() < deadline, (len(seen), client.state)
                time.sleep(0.05)
            client.publish(config.pubsub_name, "m", "after reconnecting")
            assert inbox.wait_for(1)[0].data == "after reconnecting"


def test_a_removed_member_is_disconnected_and_refused(broker_and_gate, owner_key, alice, bob):
    broker, gate, _ = broker_and_gate
    v1 = config_of(owner_key, {alice.public_hex: ALL, bob.public_hex: ALL}, pubsub=broker.url)
    v2 = config_of(owner_key, {alice.public_hex: ALL}, version=2, pubsub=broker.url)
    with connect(broker, alice, lambda: make_token(alice, v1)) as a, \
            connect(broker, bob, lambda: make_token(bob, v1)) as b:
        inbox, bob_inbox = Inbox(), Inbox()
        a.subscribe(v1.pubsub_name, inbox)
        b.subscribe(v1.pubsub_name, bob_inbox)
        b.enter(v1.pubsub_name, {"label": "bob"})
        a.publish(v1.pubsub_name, "channel_config", notice_of(v2, alice)["data"])
        # bob gets the notice that removes him, then the broker cuts him off
        assert bob_inbox.wait_for(1)[0].name == "channel_config"
        deadline = time.monotonic() + 10
        while b.state not in ("failed", "closed"):
            assert time.monotonic() < deadline, b.state
            time.sleep(0.05)
        with pytest.raises(PubSubAuthError, match="was removed from channel lab"):
            b.publish(v1.pubsub_name, "m", "after removal")
        assert gate.config(v1.pubsub_name).version == 2
        assert [m.client_id for m in a.members(v1.pubsub_name)] == []  # bob left presence
        with pytest.raises(PubSubAuthError, match=r"not a member of channel lab \(config "
                           r"version 2\)"):
            connect(broker, bob, lambda: make_token(bob, v1))  # bob's old config: no help
        a.publish(v1.pubsub_name, "m", "alice goes on")
        assert inbox.wait_until(lambda items: items[-1].data == "alice goes on")


def test_a_token_with_the_largest_config_connects(broker_and_gate, owner_key, alice):
    broker, _, _ = broker_and_gate
    members, largest = {alice.public_hex: MemberInfo("alice", ALL)}, None
    while True:
        members[f"{len(members):064x}"] = MemberInfo("x" * 100, ALL)
        try:
            largest = seal_config(make_config("lab", owner_key.public_hex, 1, "gs://b/p",
                                              broker.url, NOW, members), owner_key)
        except ChannelError:
            break
    assert len(make_token(alice, largest)) > 60_000
    with connect(broker, alice, lambda: make_token(alice, largest)) as client:
        client.publish(largest.pubsub_name, "m", "admitted")


def test_a_broker_serves_a_bounded_number_of_channels(owner_key, alice):
    gate = admission(max_channels=2)
    for name in ("one", "two"):
        gate.authorize(make_token(alice, config_of(owner_key, {alice.public_hex: ALL},
                                                   name=name), now=NOW))
    with pytest.raises(ChannelPermissionError, match="already serves 2 channels"):
        gate.authorize(make_token(alice, config_of(owner_key, {alice.public_hex: ALL},
                                                   name="three"), now=NOW))
    newer = config_of(owner_key, {alice.public_hex: ALL}, name="two", version=2)
    gate.authorize(make_token(alice, newer, now=NOW))  # channels it knows go on
    assert gate.config(newer.pubsub_name).version == 2
