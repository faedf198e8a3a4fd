"""Configs in the bucket: create-only per version; the highest that verifies wins."""

from __future__ import annotations

import logging

import pytest

from kachery_tasks.errors import ChannelError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels.bucket import (
    config_key,
    config_versions,
    latest_config,
    put_config,
    read_config,
)
from kachery_tasks.storage.buckets import open_bucket
from tests.network.channels.conftest import config_of

NODE = "ab" * 32


@pytest.fixture
def bucket(tmp_path):
    return open_bucket(f"file://{tmp_path}/bucket")


def test_versions_are_create_only(bucket, owner_key):
    v1 = config_of(owner_key, {NODE: frozenset()})
    assert put_config(bucket, v1) is True
    assert put_config(bucket, config_of(owner_key, {})) is False  # another v1: refused
    assert read_config(bucket, owner_key.public_hex, "lab", 1) == v1
    key = config_key(owner_key.public_hex, "lab", 1)
    assert key == f"channels/{owner_key.public_hex}/lab/config/000000000001.json"


def test_the_highest_version_that_verifies_is_taken(bucket, owner_key, caplog):
    owner = owner_key.public_hex
    for v in (1, 2, 3):
        put_config(bucket, config_of(owner_key, {NODE: frozenset()}, version=v))
    # junk above: signed by someone else, damaged, a valid v2 copied under 5's name
    bucket.put(config_key(owner, "lab", 4), config_of(KeyPair.generate(), {}, version=4)
               .to_bytes())
    bucket.put(config_key(owner, "lab", 6), b"{not json")
    bucket.put(config_key(owner, "lab", 5), bucket.get(config_key(owner, "lab", 2)))
    bucket.put(f"channels/{owner}/lab/config/notes.txt", b"x")
    assert config_versions(bucket, owner, "lab") == [6, 5, 4, 3, 2, 1]
    with caplog.at_level(logging.WARNING):
        assert latest_config(bucket, owner, "lab").version == 3
    reasons = caplog.text
    assert "not valid JSON" in reasons and "holds version 2, not 5" in reasons
    assert "not by the channel's owner" in reasons
    assert latest_config(bucket, owner, "lab", above=3) is None
    assert latest_config(bucket, owner, "other") is None


def test_reading_an_absent_version_is_a_channel_error(bucket, owner_key):
    with pytest.raises(ChannelError, match="no config version 7 of channel lab"):
        read_config(bucket, owner_key.public_hex, "lab", 7)


def test_two_channels_share_a_bucket(bucket, owner_key):
    other_owner = KeyPair.generate()
    put_config(bucket, config_of(owner_key, {}))
    assert put_config(bucket, config_of(other_owner, {NODE: frozenset()})) is True
    assert put_config(bucket, config_of(owner_key, {}, name="lab2")) is True
    assert latest_config(bucket, other_owner.public_hex, "lab").members.keys() == {NODE}
    assert latest_config(bucket, owner_key.public_hex, "lab2").name == "lab2"
