"""Invites: kachery-channel:<base64url of canonical JSON>, no secret, checked when parsed."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.errors import ChannelError
from kachery_tasks.network.channels.invite import PREFIX, Invite, parse_invite

OWNER = "0f" * 32


def encoded(doc: object) -> str:
    return PREFIX + base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def test_an_invite_round_trips_and_holds_only_where_and_whose():
    invite = Invite("lab", OWNER, "gs://lab/kt", "ws://labserver:7654")
    text = str(invite)
    assert text.startswith(PREFIX) and "=" not in text
    assert parse_invite(f"  {text}\n") == invite
    payload = base64.urlsafe_b64decode(text[len(PREFIX):] + "==")
    assert json.loads(payload) == {"name": "lab", "owner": OWNER, "bucket": "gs://lab/kt",
                                   "pubsub": "ws://labserver:7654"}
    assert payload == b'{"bucket":"gs://lab/kt","name":"lab","owner":"' + OWNER.encode() + \
        b'","pubsub":"ws://labserver:7654"}'  # canonical JSON
    assert invite.key == f"{OWNER[:16]}-lab"


@pytest.mark.parametrize(("text", "why"), [
    ("lab", "starts with kachery-channel:"),
    (PREFIX + "!!!", "damaged"),
    (PREFIX + "é", "damaged"),
    (encoded([1]), "must hold name, owner, bucket and pubsub"),
    (encoded({"name": "lab", "owner": OWNER, "bucket": "gs://b/p"}), "must hold"),
    (encoded({"name": "lab", "owner": "xyz", "bucket": "gs://b/p", "pubsub": "ably:"}),
     "owner key"),
    (encoded({"name": "a b", "owner": OWNER, "bucket": "gs://b/p", "pubsub": "ably:"}),
     "channel name"),
    (encoded({"name": "lab", "owner": OWNER, "bucket": "http://x", "pubsub": "ably:"}),
     "channel bucket"),
    (PREFIX + "A" * 5000, "more than an invite can be"),
])
def test_a_damaged_invite_is_a_clear_error(text, why):
    with pytest.raises(ChannelError, match=why):
        parse_invite(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(
    lambda b: PREFIX + base64.urlsafe_b64encode(b).decode()))
def test_the_parser_accepts_or_refuses_with_a_channel_error(text):
    try:
        invite = parse_invite(text)
    except ChannelError:
        return
    assert parse_invite(str(invite)) == invite
