"""Fixtures for channel tests: nodes, owner keys, configs, a broker with channel admission."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kachery_tasks.config import NodeDir, init_node_dir
from kachery_tasks.daemon.service import NodeDaemon
from kachery_tasks.keys import KeyPair, node_keypair
from kachery_tasks.network.broker import BrokerThread
from kachery_tasks.network.channels import (
    ChannelAdmission,
    ChannelSession,
    ChannelStore,
    Invite,
    JoinedChannel,
)
from kachery_tasks.network.channels.config import (
    PERMISSIONS,
    ChannelConfig,
    MemberInfo,
    make_config,
    seal_config,
)
from kachery_tasks.network.channels.membership import (
    add_node,
    announce,
    change_members,
    create_channel,
    set_permissions,
)
from kachery_tasks.network.channels.remote import ChannelRemote, channel_url
from kachery_tasks.nodes import Node

ALL = frozenset(PERMISSIONS)
NOW = 1_767_000_000


def make_node(root: Path, name: str) -> tuple[NodeDir, KeyPair]:
    """A fresh node directory ``root/name`` and its node key."""
    node = init_node_dir(root / name)
    return node, node_keypair(node)


def config_of(owner: KeyPair, members: dict[str, frozenset[str]], *, version: int = 1,
              name: str = "lab", bucket: str = "file:///tmp/unused",
              pubsub: str = "ws://127.0.0.1:9", time: int = NOW) -> ChannelConfig:
    """A config signed by ``owner`` with ``members`` (node id -> permissions)."""
    return seal_config(make_config(
        name, owner.public_hex, version, bucket, pubsub, time,
        {node: MemberInfo(f"node-{node[:6]}", perms) for node, perms in members.items()},
    ), owner)


@pytest.fixture
def owner_key() -> KeyPair:
    return KeyPair.generate()


@contextlib.contextmanager
def broker_with_admission() -> Iterator[tuple[BrokerThread, ChannelAdmission]]:
    """A broker with channel admission in a background thread: (BrokerThread, admission)."""
    admission = ChannelAdmission()
    with BrokerThread(authorize=admission.authorize, observe=admission.observe) as broker:
        admission.on_removed = broker.broker.disconnect
        yield broker, admission


@pytest.fixture
def admitting_broker():
    with broker_with_admission() as running:
        yield running


class Lab:
    """Channel ``lab`` with member nodes, their daemons and channel remotes, for tests.

    The first node added creates the channel (every permission); the next ones
    join it and are added with the permissions given. Each node lists
    ``channel:<key>`` in its remotes and stores content in 64 KiB chunks.
    """

    def __init__(self, root: Path, pubsub_url: str, bucket_url: str | None = None) -> None:
        self.root = root
        self.pubsub_url = pubsub_url
        self.bucket_url = bucket_url or f"file://{root}/lab-bucket"
        self.owner: JoinedChannel | None = None
        self.nodes: dict[str, Node] = {}
        self.daemons: list[NodeDaemon] = []
        self.sessions: list[ChannelSession] = []

    def add(self, name: str, permissions: frozenset[str] = ALL) -> Node:
        path = self.root / name
        path.mkdir(parents=True)
        (path / "config.toml").write_text('[store]\nchunk_size = "64KiB"\n')
        node_dir_ = init_node_dir(path)
        key = node_keypair(node_dir_)
        if self.owner is None:
            self.owner = create_channel(node_dir_, "lab", self.bucket_url, self.pubsub_url, name)
            joined = self.owner
            if permissions != ALL:
                change_members(self.owner, set_permissions(key.public_hex, permissions))
        else:
            config = change_members(self.owner, add_node(key.public_hex, name, permissions))
            joined = ChannelStore(node_dir_).add(Invite.of(config), config)
        node = Node(path)
        node.add_remote_url(channel_url(joined))
        self.nodes[name] = node
        return node

    def daemon(self, name: str, **options) -> NodeDaemon:
        daemon = NodeDaemon(self.nodes[name], session_options=FAST_SESSION, **options)
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def session(self, name: str, *, daemon: bool = False, start: bool = True,
                        ) -> ChannelSession:
        """A session of node ``name`` (closed at the end); ``daemon=True``: present as a
        daemon, which askers then expect answers from."""
        node = self.nodes[name]
        session = ChannelSession(ChannelStore(node.dir).find("lab"), node.key, **FAST_SESSION)
        if daemon:
            session.present(daemon=True)
        self.sessions.append(session)
        return session.start() if start else session

    def remote(self, name: str) -> ChannelRemote:
        remote = self.nodes[name].remotes[-1]
        assert isinstance(remote, ChannelRemote)
        return remote

    def change(self, change) -> ChannelConfig:
        """A membership change by the owner, announced to running members."""
        config = change_members(self.owner, change)
        announce(config, node_keypair(self.owner.node), **FAST_SESSION)
        return config

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        for daemon in self.daemons:
            daemon.stop()
        for node in self.nodes.values():
            node.close()


FAST_SESSION = {"request_timeout": 3.0, "connect_timeout": 5.0, "retry_interval": 0.2}


@pytest.fixture
def lab(tmp_path, admitting_broker):
    broker, _ = admitting_broker
    made = Lab(tmp_path, broker.url)
    yield made
    made.close()


def wait_for(predicate, timeout: float = 10.0, what: str = "the condition"):
    """Wait until ``predicate()`` returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)
