"""The channels of a node: the trusted config only moves up, files are all-or-nothing."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest

from kachery_tasks.errors import ChannelError, ChannelNotFoundError, ChannelPermissionError
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels import ChannelStore, Invite
from kachery_tasks.network.channels.store import JoinedChannel
from tests.network.channels.conftest import config_of, make_node

NODE = "ab" * 32


@pytest.fixture
def node(tmp_path):
    return make_node(tmp_path, "n")[0]


def joined(node, owner_key, version=1, **kw) -> JoinedChannel:
    config = config_of(owner_key, {NODE: frozenset()}, version=version, **kw)
    return ChannelStore(node).add(Invite.of(config), config)


def test_a_joined_channel_keeps_its_invite_and_config(node, owner_key):
    channel = joined(node, owner_key, 2)
    assert channel.path == node.path / "channels" / f"{owner_key.public_hex[:16]}-lab"
    assert sorted(p.name for p in channel.path.iterdir()) == ["config.json", "invite.txt"]
    assert channel.trusted_config().version == 2
    again = ChannelStore(node).find("lab")
    assert again.invite == channel.invite and again.trusted_config().version == 2
    assert ChannelStore(node).find(channel.key).path == channel.path
    assert not channel.is_owner
    with pytest.raises(ChannelPermissionError, match="only the owner's node"):
        channel.owner_key()


def test_the_trusted_version_never_goes_back(node, owner_key):
    channel = joined(node, owner_key, 3)
    assert channel.adopt(config_of(owner_key, {}, version=5)) is True
    with pytest.raises(ChannelError, match="version 4 of lab is older than the trusted version 5"):
        channel.adopt(config_of(owner_key, {}, version=4))
    assert channel.adopt(config_of(owner_key, {}, version=5)) is False  # the same again
    with pytest.raises(ChannelError, match="two different configs of lab claim version 5"):
        channel.adopt(config_of(owner_key, {NODE: frozenset()}, version=5))
    assert channel.trusted_config().version == 5 and channel.trusted_config().members == {}


def test_a_config_of_another_signer_is_never_adopted(node, owner_key):
    channel = joined(node, owner_key)
    forged = config_of(KeyPair.generate(), {}, version=9)
    with pytest.raises(ChannelError, match="not by the channel's owner"):
        channel.adopt(forged)
    assert channel.trusted_config().version == 1


def test_a_config_file_edited_on_disk_is_not_trusted(node, owner_key):
    channel = joined(node, owner_key)
    path = channel.path / "config.json"
    doc = json.loads(path.read_bytes())
    doc["body"]["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ChannelError, match="signature does not match"):
        channel.trusted_config()


def test_a_failed_join_leaves_nothing_behind(node, owner_key):
    config = config_of(KeyPair.generate(), {})
    invite = Invite("lab", owner_key.public_hex, "file:///b", "ably:")  # not config's owner
    with pytest.raises(ChannelError, match="not by the channel's owner"):
        ChannelStore(node).add(invite, config)
    assert os.listdir(node.path / "channels") == []
    with pytest.raises(ChannelNotFoundError, match="has not joined a channel called 'lab'"):
        ChannelStore(node).find("lab")


def test_joining_again_adopts_a_newer_config(node, owner_key):
    channel = joined(node, owner_key, 1)
    again = joined(node, owner_key, 4)
    assert again.path == channel.path and channel.trusted_config().version == 4


def test_two_channels_of_one_name_are_told_apart_by_owner(node, owner_key):
    first = joined(node, owner_key)
    second = joined(node, KeyPair.generate())
    with pytest.raises(ChannelNotFoundError, match="2 joined channels are called 'lab'"):
        ChannelStore(node).find("lab")
    assert ChannelStore(node).find(second.key).owner == second.owner
    assert [c.key for c in ChannelStore(node).all()] == sorted([first.key, second.key])


def test_the_owner_key_is_kept_private(node, owner_key):
    config = config_of(owner_key, {})
    channel = ChannelStore(node).add(Invite.of(config), config, owner_key=owner_key)
    assert channel.is_owner and channel.owner_key().public_hex == owner_key.public_hex
    assert stat.S_IMODE(os.stat(channel.path / "owner.key").st_mode) == 0o600


def test_adopting_is_one_process_at_a_time(node, owner_key, monkeypatch):
    """A slow adopt of version 2 must not overwrite a version 3 adopted meanwhile."""
    channel = joined(node, owner_key)
    read = JoinedChannel.trusted_config
    reading, paused = threading.Event(), threading.Event()

    def slow_read(self):
        config = read(self)
        if threading.current_thread().name == "slow":
            reading.set()
            paused.wait(5)
        return config

    monkeypatch.setattr(JoinedChannel, "trusted_config", slow_read)
    slow = threading.Thread(target=channel.adopt, args=(config_of(owner_key, {}, version=2),),
                            name="slow")
    slow.start()
    reading.wait(5)
    fast = threading.Thread(target=channel.adopt, args=(config_of(owner_key, {}, version=3),))
    fast.start()
    time.sleep(0.3)  # without the lock, the fast adopt completes here
    paused.set()
    slow.join(10)
    fast.join(10)
    assert read(channel).version == 3


def test_members_are_named_by_their_label_in_the_first_channel_that_lists_them(node,
                                                                             owner_key):
    other, stranger = "cd" * 32, "ef" * 32
    store = ChannelStore(node)
    for name, members in (("alpha", {NODE: frozenset()}),
                          ("beta", {NODE: frozenset(), other: frozenset()})):
        config = config_of(owner_key, members, name=name)
        store.add(Invite.of(config), config)
    assert store.member_labels([NODE, other, stranger]) == {
        NODE: f"node-{NODE[:6]} in channel alpha", other: f"node-{other[:6]} in channel beta",
        stranger: None}
    assert store.member_labels([]) == {}
