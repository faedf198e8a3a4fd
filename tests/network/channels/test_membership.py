"""The owner's operations: create a channel, change its members version by version."""

from __future__ import annotations

import logging
import os

import pytest

from kachery_tasks.errors import BucketAccessError, ChannelError, ChannelPermissionError
from kachery_tasks.network.channels import ChannelStore, Invite
from kachery_tasks.network.channels import membership as membership_module
from kachery_tasks.network.channels.bucket import config_key, config_versions, put_config
from kachery_tasks.network.channels.config import MemberInfo, make_config, seal_config
from kachery_tasks.network.channels.membership import (
    add_node,
    change_members,
    create_channel,
    remove_node,
    set_permissions,
)
from kachery_tasks.storage.buckets import open_bucket
from tests.network.channels.conftest import ALL, make_node

X, Y = "0a" * 32, "0b" * 32


@pytest.fixture
def owner(tmp_path):
    return make_node(tmp_path, "owner")


@pytest.fixture
def bucket_url(tmp_path):
    return f"file://{tmp_path}/bucket"


@pytest.fixture
def lab(owner, bucket_url):
    return create_channel(owner[0], "lab", bucket_url, "ws://127.0.0.1:9", "owner-host")


def test_create_makes_an_owner_key_and_version_1_with_this_node(owner, lab, bucket_url):
    node, key = owner
    assert lab.is_owner and lab.owner_key().public_hex == lab.owner != key.public_hex
    config = lab.trusted_config()
    assert config.version == 1 and config.bucket == bucket_url
    assert config.members == {key.public_hex: MemberInfo("owner-host", ALL)}
    assert config_versions(open_bucket(bucket_url), lab.owner, "lab") == [1]
    assert ChannelStore(node).find("lab").path == lab.path


def test_one_node_cannot_own_two_channels_of_one_name(owner, lab, bucket_url):
    with pytest.raises(ChannelError, match="already owns a channel called lab"):
        create_channel(owner[0], "lab", bucket_url, "ably:", "x")


def test_a_create_that_cannot_publish_leaves_nothing(owner, bucket_url, monkeypatch):
    def unwritable(bucket, config):
        raise BucketAccessError(f"{bucket.url}: permission denied")

    monkeypatch.setattr(membership_module, "put_config", unwritable)
    with pytest.raises(BucketAccessError, match="permission denied"):
        create_channel(owner[0], "lab", bucket_url, "ably:", "x")
    assert os.listdir(owner[0].path / "channels") == []


def test_each_change_is_the_next_version(lab, bucket_url, owner):
    v2 = change_members(lab, add_node(X, "alice", frozenset({"download"})))
    v3 = change_members(lab, set_permissions(X, frozenset({"download", "upload"}), "alicia"))
    v4 = change_members(lab, remove_node(owner[1].public_hex))
    assert (v2.version, v3.version, v4.version) == (2, 3, 4)
    assert v4.members == {X: MemberInfo("alicia", frozenset({"download", "upload"}))}
    assert config_versions(open_bucket(bucket_url), lab.owner, "lab") == [4, 3, 2, 1]
    assert lab.trusted_config() == v4


@pytest.mark.parametrize(("change", "why"), [
    (add_node(X, "again", frozenset()), "already a member of lab"),
    (remove_node(Y), "is not a member of lab"),
    (set_permissions(Y, frozenset()), "is not a member of lab"),
    (set_permissions(X, frozenset({"download"})), "already has exactly these permissions"),
])
def test_a_change_that_does_not_apply_is_refused(lab, change, why):
    change_members(lab, add_node(X, "alice", frozenset({"download"})))
    with pytest.raises(ChannelError, match=why):
        change_members(lab, change)
    assert lab.trusted_config().version == 2


def test_only_the_owners_node_changes_members(lab, tmp_path):
    other, _ = make_node(tmp_path, "other")
    config = lab.trusted_config()
    joined = ChannelStore(other).add(Invite.of(config), config)
    with pytest.raises(ChannelPermissionError, match="only the owner's node can change"):
        change_members(joined, add_node(X, "x", frozenset()))


def test_racing_owners_both_land_their_changes(lab, bucket_url, owner):
    key = lab.owner_key()
    raced = []

    def racing_add(config):
        if not raced:  # another process of the owner publishes version 2 first
            v1 = lab.trusted_config()
            rival = seal_config(make_config("lab", lab.owner, 2, bucket_url, v1.pubsub, 0,
                                            {**v1.members, Y: MemberInfo("bob", ALL)}), key)
            assert put_config(open_bucket(bucket_url), rival)
            raced.append(rival)
        return {**config.members, X: MemberInfo("alice", frozenset())}

    config = change_members(lab, racing_add)
    assert config.version == 3 and {X, Y, owner[1].public_hex} == set(config.members)


def test_the_loser_of_a_race_that_no_longer_applies_fails_clearly(lab, bucket_url):
    rival = change_members(lab, add_node(X, "alice", frozenset()))  # published meanwhile...
    lab.path.joinpath("config.json").write_bytes(
        open_bucket(bucket_url).get(config_key(lab.owner, "lab", 1)))  # ...unseen here
    with pytest.raises(ChannelError, match="already a member of lab"):
        change_members(lab, add_node(X, "alice", frozenset()))
    assert rival.version == 2


def test_a_version_taken_by_junk_is_skipped(lab, bucket_url, caplog):
    bucket = open_bucket(bucket_url)
    bucket.put(config_key(lab.owner, "lab", 2), b"junk from someone with write access")
    with caplog.at_level(logging.WARNING):
        config = change_members(lab, add_node(X, "alice", frozenset()))
    assert config.version == 3 and "version 2 of lab is taken by an object that does not" \
        in caplog.text


def test_giving_up_after_the_attempts(lab, bucket_url, monkeypatch):
    monkeypatch.setattr(membership_module, "MAX_ATTEMPTS", 3)
    bucket = open_bucket(bucket_url)
    for v in (2, 3, 4):
        bucket.put(config_key(lab.owner, "lab", v), b"junk")
    with pytest.raises(ChannelError, match="after 3 attempts: every version tried was taken"):
        change_members(lab, add_node(X, "alice", frozenset()))


def test_a_newer_version_in_the_bucket_is_the_base(lab, bucket_url, tmp_path):
    v2 = change_members(lab, add_node(X, "alice", frozenset()))
    lab.path.joinpath("config.json").write_bytes(
        open_bucket(bucket_url).get(config_key(lab.owner, "lab", 1)))  # this node saw only v1
    v3 = change_members(lab, add_node(Y, "bob", frozenset()))
    assert v3.version == 3 and set(v2.members) < set(v3.members)
