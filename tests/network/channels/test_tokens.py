"""Admission tokens: a claim signed by the node key plus the owner-signed config."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.canonical import canonical_json
from kachery_tasks.envelopes import seal
from kachery_tasks.errors import ChannelError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels.config import MemberInfo, make_config, seal_config
from kachery_tasks.network.channels.tokens import (
    MAX_TOKEN_CHARS,
    TOKEN_KIND,
    make_token,
    read_token,
)
from tests.network.channels.conftest import ALL, NOW, config_of


def decode(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def encode(doc: dict) -> str:
    return base64.urlsafe_b64encode(canonical_json(doc)).decode().rstrip("=")


@pytest.fixture
def node_key():
    return KeyPair.generate()


def test_a_token_says_who_asks_for_which_channel_when(owner_key, node_key):
    config = config_of(owner_key, {node_key.public_hex: ALL}, version=4)
    token = make_token(node_key, config, now=NOW + 5)
    assert "=" not in token and token.isascii()
    claim = read_token(token)
    assert claim.node == node_key.public_hex and claim.time == NOW + 5
    assert claim.channel == config.pubsub_name and claim.config == config
    assert len(claim.nonce) == 32 and read_token(make_token(node_key, config)).nonce != claim.nonce
    assert set(decode(token)) == {"claim", "config"}


def test_a_forged_claim_is_refused(owner_key, node_key):
    config = config_of(owner_key, {node_key.public_hex: ALL})
    doc = decode(make_token(node_key, config))
    doc["claim"]["body"]["time"] += 1  # edited after signing
    with pytest.raises(ChannelError, match="signature does not match"):
        read_token(encode(doc))
    other = KeyPair.generate()  # signed by someone else, naming the member
    doc["claim"] = seal(TOKEN_KIND, {**doc["claim"]["body"]}, other).to_dict()
    with pytest.raises(ChannelError, match="names another node than the key that signed it"):
        read_token(encode(doc))
    doc["claim"] = seal("channel-message", {**doc["claim"]["body"]}, node_key).to_dict()
    with pytest.raises(ChannelError, match="expected pubsub-token"):
        read_token(encode(doc))


def test_a_config_signed_by_another_key_is_refused(owner_key, node_key):
    impostor = KeyPair.generate()
    real = config_of(owner_key, {})
    fake = config_of(impostor, {node_key.public_hex: ALL})
    doc = decode(make_token(node_key, fake))
    doc["claim"] = seal(TOKEN_KIND, {**doc["claim"]["body"], "channel": real.pubsub_name},
                        node_key).to_dict()
    with pytest.raises(ChannelError, match="not signed by the owner of"):
        read_token(encode(doc))


def test_a_config_for_another_channel_of_the_owner_is_refused(owner_key, node_key):
    lab2 = config_of(owner_key, {node_key.public_hex: ALL}, name="lab2")
    doc = decode(make_token(node_key, lab2))
    doc["claim"] = seal(TOKEN_KIND, {**doc["claim"]["body"],
                                     "channel": f"kt:{owner_key.public_hex[:32]}:lab"},
                        node_key).to_dict()
    with pytest.raises(ChannelError, match="config of channel 'lab2', not 'lab'"):
        read_token(encode(doc))


@pytest.mark.parametrize("token", ["anonymous", "", "é", "A" * (MAX_TOKEN_CHARS + 1),
                                   encode({"claim": 1}), encode({"claim": {}, "config": {}})])
def test_other_strings_are_not_tokens(token):
    with pytest.raises(ChannelError):
        read_token(token)


def test_a_token_with_the_largest_config_stays_under_the_limit(owner_key, node_key):
    members, label = {}, "x" * 100
    while True:  # add members until one more would not fit
        members[f"{len(members):064x}"] = MemberInfo(label, ALL)
        try:
            config = seal_config(make_config("lab", owner_key.public_hex, 1, "gs://b/p",
                                             "ws://h:1", NOW, members), owner_key)
        except ChannelError:
            break
        largest = config
    token = make_token(node_key, largest)
    assert len(token) <= MAX_TOKEN_CHARS
    assert read_token(token).config == largest


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(
    lambda b: base64.urlsafe_b64encode(b).decode()))
def test_the_parser_accepts_or_refuses_with_a_channel_error(text):
    with pytest.raises(ChannelError):
        read_token(text)
