"""What a channel's owner does: create the channel, change its members, tell the members.

Every change re-signs the config with the owner key as the next version and
publishes it to the bucket create-only. When two processes holding the owner
key change the same channel at once, one of them finds its version taken: it
reads the winner's config, applies its change on top and tries the next
version (so both changes land), or fails with the reason when its change no
longer applies (the node was added or removed meanwhile). An object at that
version which does not verify (someone with write access to the bucket put
it there) is skipped.

After publishing, :func:`announce` sends a ``channel_config`` notice on the
channel's pub/sub so running members adopt the version within seconds;
members that are not running find it in the bucket when they start.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping

from ...config import NodeDir
from ...errors import ChannelError, PubSubError
from ...keys import KeyPair, node_keypair
from ...storage.buckets import open_bucket
from .bucket import latest_config, put_config
from .config import (
    PERMISSIONS,
    ChannelConfig,
    MemberInfo,
    check_label,
    check_node_id,
    make_config,
    seal_config,
)
from .invite import Invite
from .messages import seal_message
from .session import connect_channel_pubsub
from .store import ChannelStore, JoinedChannel

log = logging.getLogger("kachery_tasks.network.channels")

MAX_ATTEMPTS = 20

Change = Callable[[ChannelConfig], Mapping[str, MemberInfo]]
"""A membership change: the members the next version should have, given the current config.
Raises ChannelError when it does not apply to that config."""


def create_channel(node: NodeDir, name: str, bucket_url: str, pubsub_url: str, label: str,
                   *, now: float | None = None) -> JoinedChannel:
    """Create channel ``name`` owned by a new owner key kept on this node.

    Version 1 has this node as its one member, with every permission. The
    channel is recorded in the node directory (owner key included) and the
    config published to the bucket; if publishing fails nothing is left.
    """
    store = ChannelStore(node)
    if any(c.name == name and c.is_owner for c in store.all()):
        raise ChannelError(f"this node already owns a channel called {name}: choose another "
                           "name")
    owner = KeyPair.generate()
    me = node_keypair(node).public_hex
    config = seal_config(make_config(
        name, owner.public_hex, 1, bucket_url, pubsub_url, int(time.time() if now is None else now),
        {me: MemberInfo(check_label(label), frozenset(PERMISSIONS))}), owner)
    bucket = open_bucket(config.bucket)
    channel = store.add(Invite.of(config), config, owner_key=owner)
    try:
        if not put_config(bucket, config):
            raise ChannelError(f"{bucket.url} already holds a config of {name} by this new key")
    except BaseException:
        shutil.rmtree(channel.path, ignore_errors=True)
        raise
    return channel


def change_members(channel: JoinedChannel, change: Change, *,
                   now: float | None = None) -> ChannelConfig:
    """Publish the next config version with the members ``change`` gives; return it.

    Only on the owner's node. The base is the newest valid version in the
    bucket or trusted here, whichever is higher.
    """
    key = channel.owner_key()
    bucket = open_bucket(channel.bucket_url)
    trusted = channel.trusted_config()
    found = latest_config(bucket, channel.owner, channel.name,
                          above=trusted.version if trusted is not None else 0)
    base = found or trusted
    if base is None:
        raise ChannelError(f"no config of {channel.name} found, neither here nor in {bucket.url}")
    version = base.version + 1
    for _ in range(MAX_ATTEMPTS):
        stamp = int(time.time() if now is None else now)
        config = seal_config(make_config(base.name, base.owner, version, base.bucket,
                                         base.pubsub, stamp, change(base)), key)
        if put_config(bucket, config):
            channel.adopt(config)
            return config
        winner = latest_config(bucket, channel.owner, channel.name, above=base.version)
        if winner is not None and winner.version >= version:
            log.info("version %d of %s was published meanwhile; applying the change on top",
                     winner.version, channel.name)
            base, version = winner, winner.version + 1
        else:
            log.warning("version %d of %s is taken by an object that does not verify; trying "
                        "version %d", version, channel.name, version + 1)
            version += 1
    raise ChannelError(f"could not publish a new config of {channel.name} to {bucket.url} "
                       f"after {MAX_ATTEMPTS} attempts: every version tried was taken")


def add_node(node_id: str, label: str, permissions: frozenset[str]) -> Change:
    """The change that adds ``node_id`` as a member."""
    check_node_id(node_id)
    member = MemberInfo(check_label(label), permissions)

    def change(config: ChannelConfig) -> Mapping[str, MemberInfo]:
        if node_id in config.members:
            raise ChannelError(
                f"node {node_id[:16]}... is already a member of {config.name} (version "
                f"{config.version}); use set-permissions to change what it may do")
        return {**config.members, node_id: member}

    return change


def remove_node(node_id: str) -> Change:
    """The change that removes member ``node_id``."""
    check_node_id(node_id)

    def change(config: ChannelConfig) -> Mapping[str, MemberInfo]:
        _member(config, node_id)
        return {n: m for n, m in config.members.items() if n != node_id}

    return change


def set_permissions(node_id: str, permissions: frozenset[str],
                    label: str | None = None) -> Change:
    """The change that gives member ``node_id`` exactly ``permissions`` (and maybe a new label)."""
    check_node_id(node_id)
    if label is not None:
        check_label(label)

    def change(config: ChannelConfig) -> Mapping[str, MemberInfo]:
        member = _member(config, node_id)
        updated = MemberInfo(label or member.label, permissions)
        if updated == member:
            raise ChannelError(f"node {node_id[:16]}... already has exactly these permissions "
                               f"in {config.name}: nothing to change")
        return {**config.members, node_id: updated}

    return change


def _member(config: ChannelConfig, node_id: str) -> MemberInfo:
    member = config.members.get(node_id)
    if member is None:
        raise ChannelError(f"node {node_id[:16]}... is not a member of {config.name} (version "
                           f"{config.version}): see 'kachery-tasks channel status {config.name}'")
    return member


def announce(config: ChannelConfig, key: KeyPair, **options: object) -> str | None:
    """Send a ``channel_config`` notice of ``config`` on its pub/sub, signed by node ``key``.

    Returns None when sent, else why not (a broker not running is no error:
    members read the bucket when they start).
    """
    try:
        with connect_channel_pubsub(key, lambda: config, **options) as pubsub:
            notice = seal_message("channel_config", config.pubsub_name,
                                  {"config": config.envelope.to_dict()}, key)
            pubsub.publish(config.pubsub_name, "channel_config", notice.to_dict())
    except PubSubError as e:
        return str(e)
    return None
