"""Fixtures for channel tests: nodes, owner keys, configs, a broker with channel admission."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kachery_tasks.config import NodeDir, init_node_dir
from kachery_tasks.keys import KeyPair, node_keypair
from kachery_tasks.network.broker import BrokerThread
from kachery_tasks.network.channels import ChannelAdmission
from kachery_tasks.network.channels.config import (
    PERMISSIONS,
    ChannelConfig,
    MemberInfo,
    make_config,
    seal_config,
)

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
