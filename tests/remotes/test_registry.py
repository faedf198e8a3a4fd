"""Remotes opened by URL through the registry; a new kind is one registration."""

from __future__ import annotations

import pytest

import kachery_tasks as kachery
from kachery_tasks.errors import InvalidValueError
from kachery_tasks.remotes import open_remote, register_remote
from kachery_tasks.remotes.base import Remote
from kachery_tasks.remotes.bucket import BucketRemote


class Echo(Remote):
    """A remote that has every content id it is asked for (for the registry test)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.asked: list[str] = []

    def fetch_content(self, store, uri, progress=None):
        self.asked.append(uri)
        return store.load_file(store.store_bytes(b"echo"))


def test_file_and_gs_urls_open_bucket_remotes(tmp_path):
    r = open_remote(f"file://{tmp_path}/b")
    assert isinstance(r, BucketRemote) and r is open_remote(f"file://{tmp_path}/b")


def test_a_registered_kind_is_used_by_a_node(tmp_path):
    register_remote("echo", f"{__name__}:Echo")
    n = kachery.node(tmp_path / "n", remotes=["echo:anything"])
    uri = "sha256://" + "1" * 64
    path = n.load_file(uri)
    with open(path, "rb") as f:
        assert f.read() == b"echo" and n.remotes[0].asked == [uri]


@pytest.mark.parametrize("scheme,target", [
    ("Bad", "m:C"), ("", "m:C"), ("ok", "no-colon"), ("ok", "m:C:D"), (3, "m:C"),
])
def test_bad_registrations_are_refused(scheme, target):
    with pytest.raises(InvalidValueError):
        register_remote(scheme, target)


def test_unknown_and_unloadable_remotes_are_clear_errors():
    with pytest.raises(InvalidValueError, match="unknown remote"):
        open_remote("nosuch://x")
    register_remote("broken", "no_such_module_here:Remote")
    with pytest.raises(InvalidValueError, match="cannot be loaded"):
        open_remote("broken:x")


def test_a_registered_bucket_scheme_is_a_remote(monkeypatch):
    from kachery_tasks.storage import buckets

    monkeypatch.setattr(buckets, "_BACKENDS", dict(buckets._BACKENDS))  # undone after
    buckets.register_bucket("mem", "tests.storage.buckets.memory:MemoryBucket")
    r = open_remote("mem://lab/share")
    assert isinstance(r, BucketRemote) and r.url == "mem://lab/share"


class PerNode(Remote):
    """A remote that acts for one node."""

    per_node = True

    def __init__(self, url: str, node) -> None:
        self.url = url
        self.node = node


def test_a_remote_acting_for_a_node_is_kept_per_node_directory(tmp_path):
    register_remote("pernode", f"{__name__}:PerNode")
    a, b = kachery.node(tmp_path / "a"), kachery.node(tmp_path / "b")
    ra = open_remote("pernode:x", a)
    assert ra.node is a and open_remote("pernode:x", a) is ra
    assert open_remote("pernode:x", b) is not ra
    n = kachery.node(tmp_path / "a", remotes=["pernode:x"])
    assert n.remotes == [ra]
    with pytest.raises(InvalidValueError, match="acts for a node"):
        open_remote("pernode:y")


def test_channel_urls_are_channel_remotes(tmp_path):
    from kachery_tasks.network.channels.remote import ChannelRemote

    n = kachery.node(tmp_path / "n")
    remote = open_remote("channel:lab", n)
    assert isinstance(remote, ChannelRemote) and remote.node is n and remote.name == "lab"
