"""Channel configs: every field checked, the owner's signature required."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.envelopes import seal
from kachery_tasks.errors import ChannelError, InvalidValueError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels.config import (
    CONFIG_KIND,
    MAX_CONFIG_BYTES,
    MemberInfo,
    check_bucket_url,
    check_pubsub_url,
    make_config,
    open_config,
    parse_config_body,
    parse_permissions,
    parse_pubsub_channel_name,
    pubsub_channel_name,
    seal_config,
)
from tests.network.channels.conftest import ALL, NOW, config_of

NODE = "ab" * 32


def test_a_sealed_config_opens_with_its_owner_key(owner_key):
    config = config_of(owner_key, {NODE: frozenset({"download"})}, version=3)
    opened = open_config(config.to_bytes(), owner_key.public_hex, "lab")
    assert opened == config
    assert opened.version == 3 and opened.permissions_of(NODE) == {"download"}
    assert opened.permissions_of("cd" * 32) == frozenset()
    assert opened.pubsub_name == f"kt:{owner_key.public_hex[:32]}:lab"
    body = json.loads(config.to_bytes())["body"]
    assert body["members"][NODE] == {"label": f"node-{NODE[:6]}", "permissions": ["download"]}
    assert set(body) == {"name", "owner", "version", "bucket", "pubsub", "time", "members"}


def test_a_config_signed_by_another_key_is_refused(owner_key):
    other = KeyPair.generate()
    forged = config_of(other, {NODE: ALL})
    with pytest.raises(ChannelError, match="not by the channel's owner"):
        open_config(forged.to_bytes(), owner_key.public_hex)
    # the body even names the real owner: still refused, the signer counts
    body = {**forged.body(), "owner": owner_key.public_hex}
    env = seal(CONFIG_KIND, body, other)
    with pytest.raises(ChannelError, match="not by the channel's owner"):
        open_config(env.to_bytes(), owner_key.public_hex)


def test_a_config_naming_another_owner_than_its_signer_is_refused(owner_key):
    body = {**config_of(owner_key, {}).body(), "owner": "cd" * 32}
    env = seal(CONFIG_KIND, body, owner_key)
    with pytest.raises(ChannelError, match="names owner cdcd"):
        open_config(env.to_bytes(), owner_key.public_hex)


def test_an_edited_config_does_not_verify(owner_key):
    doc = json.loads(config_of(owner_key, {NODE: frozenset()}).to_bytes())
    doc["body"]["members"][NODE]["permissions"] = ["upload"]
    with pytest.raises(ChannelError, match="signature does not match"):
        open_config(json.dumps(doc), owner_key.public_hex)


def test_the_name_is_checked_when_given(owner_key):
    config = config_of(owner_key, {}, name="other")
    with pytest.raises(ChannelError, match="config of channel 'other', not 'lab'"):
        open_config(config.to_bytes(), owner_key.public_hex, "lab")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("version", 0, "version must be a whole number from 1"),
    ("version", True, "version must be"),
    ("version", 1.5, "version must be"),
    ("time", -1, "time must be"),
    ("name", "../x", "channel name"),
    ("name", "", "channel name"),
    ("bucket", "s3://x/y", "channel bucket"),
    ("bucket", "file://relative", "channel bucket"),
    ("pubsub", "http://x:1", "pub/sub URL"),
    ("pubsub", "ws://host", "pub/sub URL"),
    ("pubsub", "ws://host:99999", "pub/sub URL"),
    ("members", [], "members must be a JSON object"),
    ("members", {"xyz": {"label": "a", "permissions": []}}, "member node id"),
    ("members", {NODE: {"label": "a"}}, "must be {label, permissions}"),
    ("members", {NODE: {"label": "", "permissions": []}}, "member label"),
    ("members", {NODE: {"label": "a\nb", "permissions": []}}, "member label"),
    ("members", {NODE: {"label": "a", "permissions": ["admin"]}}, "unknown permission 'admin'"),
    ("members", {NODE: {"label": "a", "permissions": ["upload", "upload"]}}, "listed twice"),
    ("members", {NODE: {"label": "a", "permissions": "upload"}}, "must be a list"),
])
def test_every_field_is_checked(owner_key, field, value, why):
    body = {**config_of(owner_key, {}).body(), field: value}
    with pytest.raises(ChannelError, match=why):
        parse_config_body(body)
    with pytest.raises(ChannelError, match=why):  # signed by the owner, still refused
        open_config(seal(CONFIG_KIND, body, owner_key).to_dict(), owner_key.public_hex)


def test_missing_and_unknown_fields_are_refused(owner_key):
    body = config_of(owner_key, {}).body()
    with pytest.raises(ChannelError, match="missing field 'time'"):
        parse_config_body({k: v for k, v in body.items() if k != "time"})
    with pytest.raises(ChannelError, match="unknown field 'extra'"):
        parse_config_body({**body, "extra": 1})


def test_sealing_needs_the_owner_key(owner_key):
    config = make_config("lab", owner_key.public_hex, 1, "file:///b", "ably:", NOW, {})
    with pytest.raises(ChannelError, match="is not the owner key"):
        seal_config(config, KeyPair.generate())


def test_a_config_over_the_size_limit_cannot_be_made_nor_read(owner_key):
    members = {f"{i:064x}": MemberInfo("x" * 100, ALL) for i in range(300)}
    config = make_config("lab", owner_key.public_hex, 1, "file:///b", "ably:", NOW, members)
    with pytest.raises(ChannelError, match=r"300 members, over the limit of 49152 bytes"):
        seal_config(config, owner_key)
    big = seal(CONFIG_KIND, config.body(), owner_key).to_bytes()
    assert len(big) > MAX_CONFIG_BYTES
    with pytest.raises(ChannelError, match="over the limit"):
        open_config(big, owner_key.public_hex)
    with pytest.raises(ChannelError, match="over the limit"):
        open_config(json.loads(big), owner_key.public_hex)


def test_permission_lists_parse():
    assert parse_permissions("download, upload") == {"download", "upload"}
    assert parse_permissions("all") == ALL
    assert parse_permissions("") == frozenset()
    with pytest.raises(InvalidValueError, match="unknown permission 'root'"):
        parse_permissions("download,root")


def test_urls():
    assert check_bucket_url("gs://lab/kt") == "gs://lab/kt"
    assert check_bucket_url("file:///mnt/share") == "file:///mnt/share"
    assert check_pubsub_url("ws://[::1]:7654") == "ws://[::1]:7654"
    assert check_pubsub_url("ably:") == "ably:"
    for bad in ("gs://", "file:///", "ws://h:1/path", "ws://h:x", 5, "ably: x"):
        with pytest.raises(InvalidValueError):
            check_bucket_url(bad) if str(bad).startswith(("gs", "file")) else check_pubsub_url(
                bad)


def test_pubsub_channel_names_round_trip(owner_key):
    name = pubsub_channel_name(owner_key.public_hex, "lab-2")
    assert parse_pubsub_channel_name(name) == (owner_key.public_hex[:32], "lab-2")
    for bad in ("kt:abc:lab", "kt:" + "0" * 32 + ":", "xx:" + "0" * 32 + ":lab", "lab"):
        with pytest.raises(ChannelError, match="not a channel's pub/sub name"):
            parse_pubsub_channel_name(bad)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
FIELD_VALUES = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["lab", "", "a/b"]) | JSON,
    "owner": st.sampled_from(["ab" * 32, "AB" * 32]) | JSON,
    "version": st.integers(-2, 2**60) | JSON,
    "bucket": st.sampled_from(["gs://b/p", "file:///x", "gs://"]) | JSON,
    "pubsub": st.sampled_from(["ws://h:1", "ably:", "ws://h"]) | JSON,
    "time": st.integers(-2, 2**60) | JSON,
    "members": st.dictionaries(st.sampled_from([NODE, "x"]), st.fixed_dictionaries(
        {"label": st.text(max_size=5), "permissions": st.lists(st.sampled_from(
            ["download", "upload", "bad"]), max_size=3)}) | JSON, max_size=2) | JSON,
    "extra": JSON,
})


@settings(max_examples=300, deadline=None)
@given(body=FIELD_VALUES | JSON)
def test_the_body_parser_accepts_or_refuses_with_a_channel_error(body):
    try:
        config = parse_config_body(body)
    except ChannelError:
        return
    assert parse_config_body(config.body()) == config  # what parses, round-trips
