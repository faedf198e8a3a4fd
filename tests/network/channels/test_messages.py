"""Channel messages: sealed by the sender's node key, checked by every receiver."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.envelopes import seal
from kachery_tasks.errors import InvalidValueError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels import MessageChecker, MessageDropped, parse_message
from kachery_tasks.network.channels import messages as messages_module
from kachery_tasks.network.channels.messages import (
    MAX_MESSAGE_BYTES,
    MESSAGE_KIND,
    REQUIRED_PERMISSION,
    seal_message,
)
from tests.network.channels.conftest import ALL, NOW, config_of


class Keys:
    def __init__(self) -> None:
        self.owner = KeyPair.generate()
        self.alice = KeyPair.generate()  # every permission
        self.bob = KeyPair.generate()  # download only
        self.eve = KeyPair.generate()  # not a member


@pytest.fixture
def keys():
    return Keys()


@pytest.fixture
def config(keys):
    return config_of(keys.owner, {keys.alice.public_hex: ALL,
                                  keys.bob.public_hex: frozenset({"download"})})


@pytest.fixture
def checker(config):
    return MessageChecker(config, clock=lambda: NOW)


def sealed(config, key, type="request_file", body=None, **kw):
    return seal_message(type, config.pubsub_name, {"uri": "sha256://ab"} if body is None else
                        body, key, now=kw.pop("now", NOW), **kw).to_dict()


def reason(checker, data) -> str:
    with pytest.raises(MessageDropped) as dropped:
        checker.accept(data)
    return dropped.value.reason


def test_a_valid_message_is_accepted_in_any_form(checker, config, keys):
    data = sealed(config, keys.bob)
    msg = checker.accept(data)
    assert (msg.type, msg.sender, msg.body, msg.time) == (
        "request_file", keys.bob.public_hex, {"uri": "sha256://ab"}, NOW)
    assert msg.channel == config.pubsub_name and len(msg.nonce) == 32
    assert checker.accept(json.dumps(sealed(config, keys.bob))).sender == keys.bob.public_hex
    assert checker.accept(json.dumps(sealed(config, keys.bob)).encode()).type == "request_file"
    assert set(data["body"]) == {"type", "channel", "time", "nonce", "body"}
    assert data["kind"] == MESSAGE_KIND and data["signer"] == keys.bob.public_hex


def test_a_tampered_message_has_a_bad_signature(checker, config, keys):
    data = sealed(config, keys.alice)
    data["body"]["body"]["uri"] = "sha256://cd"
    assert reason(checker, data) == "bad-signature"
    data = sealed(config, keys.alice)
    data["signer"] = keys.bob.public_hex  # claims another sender
    assert reason(checker, data) == "bad-signature"


def test_a_message_for_another_channel_is_dropped(checker, keys):
    other = config_of(keys.owner, {keys.alice.public_hex: ALL}, name="other")
    assert reason(checker, sealed(other, keys.alice)) == "wrong-channel"


@pytest.mark.parametrize("offset", [-301, 301])
def test_a_message_more_than_five_minutes_off_is_dropped(checker, config, keys, offset):
    assert reason(checker, sealed(config, keys.alice, now=NOW + offset)) == "stale"
    checker.accept(sealed(config, keys.alice, now=NOW + offset // 301 * 299))


def test_a_message_from_a_non_member_is_dropped(checker, config, keys):
    assert reason(checker, sealed(config, keys.eve)) == "not-member"


@pytest.mark.parametrize(("type", "permission"), sorted(
    (t, p) for t, p in REQUIRED_PERMISSION.items() if p not in (None, "download")))
def test_a_message_needing_a_permission_the_sender_lacks_is_dropped(checker, config, keys, type,
                                                                    permission):
    assert reason(checker, sealed(config, keys.bob, type=type, body={})) == "permission"
    assert checker.accept(sealed(config, keys.alice, type=type, body={})).type == type


def test_messages_for_any_member_need_no_permission(keys):
    config = config_of(keys.owner, {keys.bob.public_hex: frozenset()})
    checker = MessageChecker(config, clock=lambda: NOW)
    for type in ("feed_messages", "channel_config"):
        assert checker.accept(sealed(config, keys.bob, type=type, body={})).type == type
    assert reason(checker, sealed(config, keys.bob)) == "permission"  # request_file: download


def test_an_unknown_type_is_dropped(checker, config, keys):
    body = {"type": "launch", "channel": config.pubsub_name, "time": NOW, "nonce": "0" * 32,
            "body": {}}
    assert reason(checker, seal(MESSAGE_KIND, body, keys.alice).to_dict()) == "unknown-type"
    with pytest.raises(InvalidValueError, match="unknown channel message type 'launch'"):
        seal_message("launch", config.pubsub_name, {}, keys.alice)


def test_a_replayed_message_is_dropped(checker, config, keys):
    data = sealed(config, keys.alice)
    checker.accept(data)
    assert reason(checker, data) == "replay"
    other_sender = sealed(config, keys.bob, nonce=data["body"]["nonce"])
    checker.accept(other_sender)  # nonces are per sender


def test_nonces_are_remembered_across_config_versions(checker, config, keys):
    data = sealed(config, keys.alice)
    checker.accept(data)
    checker.config = config_of(keys.owner, {keys.alice.public_hex: ALL}, version=2)
    assert reason(checker, data) == "replay"


def test_a_sender_flooding_the_window_is_dropped_and_old_nonces_are_forgotten(
        config, keys, monkeypatch):
    monkeypatch.setattr(messages_module, "MAX_NONCES_PER_SENDER", 10)
    clock = [NOW]
    checker = MessageChecker(config, clock=lambda: clock[0])
    for _ in range(10):
        checker.accept(sealed(config, keys.alice))
    assert reason(checker, sealed(config, keys.alice)) == "flood"
    clock[0] = NOW + 301  # the first ten can no longer be replayed: forgotten
    checker.accept(sealed(config, keys.alice, now=clock[0]))


def test_a_membership_change_applies_at_once(checker, config, keys):
    checker.config = config_of(keys.owner, {keys.alice.public_hex: ALL}, version=2)
    assert reason(checker, sealed(config, keys.bob)) == "not-member"


def test_check_logs_why_and_counts(checker, config, keys, caplog):
    with caplog.at_level(logging.WARNING):
        assert checker.check(sealed(config, keys.eve)) is None
        assert checker.check({"kind": "x"}) is None
        assert checker.check(sealed(config, keys.alice)) is not None
    assert checker.dropped == {"not-member": 1, "malformed": 1}
    assert "dropped a message on lab (not-member): request_file from" in caplog.text


def test_a_message_over_the_size_limit_cannot_be_sealed_nor_read(config, keys):
    with pytest.raises(InvalidValueError, match="put the data in the channel's bucket"):
        seal_message("request_file", config.pubsub_name, {"x": "a" * MAX_MESSAGE_BYTES},
                     keys.alice)
    big = json.dumps(seal(MESSAGE_KIND, {"x": "a" * MAX_MESSAGE_BYTES}, keys.alice).to_dict())
    assert reason(MessageChecker(config), big) == "malformed"


@pytest.mark.parametrize("edit", [
    lambda b: b.pop("nonce"),
    lambda b: b.update(nonce="short"),
    lambda b: b.update(time="now"),
    lambda b: b.update(time=True),
    lambda b: b.update(type="Big Type"),
    lambda b: b.update(channel=""),
    lambda b: b.update(extra=1),
])
def test_a_malformed_body_is_dropped_even_when_signed(checker, config, keys, edit):
    body = dict(sealed(config, keys.alice)["body"])
    edit(body)
    assert reason(checker, seal(MESSAGE_KIND, body, keys.alice).to_dict()) == "malformed"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(data=JSON | st.text(max_size=200) | st.binary(max_size=200) | st.fixed_dictionaries({
    "kind": st.just(MESSAGE_KIND) | st.text(max_size=5), "signer": st.just("ab" * 32) | JSON,
    "body": JSON, "signature": st.just("cd" * 64) | JSON}))
def test_the_parser_refuses_anything_else_with_message_dropped(data):
    with pytest.raises(MessageDropped) as dropped:
        parse_message(data)
    assert dropped.value.reason in ("malformed", "bad-signature")


@settings(max_examples=100, deadline=None)
@given(type=st.sampled_from(sorted(REQUIRED_PERMISSION)), body=JSON.filter(
    lambda v: "NaN" not in json.dumps(v) and "Infinity" not in json.dumps(v)))
def test_sealed_messages_parse_back(type, body):
    key = _KEY
    msg = parse_message(json.loads(json.dumps(seal_message(type, "kt:x:lab", body, key).to_dict())))
    assert (msg.type, msg.body, msg.sender) == (type, body, key.public_hex)


_KEY = KeyPair.generate()


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["body", "to", "provider", "x"]), inner, max_size=3),
    max_leaves=12)


@given(st.sampled_from([None, "file_absent", "request_task", "request_file", "x"]), _JSONISH)
def test_addressed_elsewhere_reads_any_data_without_raising(type, data):
    from kachery_tasks.network.channels.messages import ADDRESSED_BY, addressed_elsewhere

    got = addressed_elsewhere(type, data, "me")
    assert got in (True, False)
    if got:  # only a message of an addressed type naming another reader is skipped
        field = ADDRESSED_BY[type]
        assert data["body"]["body"][field] not in ("me", None)
    wrapped = {"body": {"body": {"to": "me", "provider": "me"}}}
    assert not addressed_elsewhere(type, wrapped, "me")
