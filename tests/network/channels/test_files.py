"""Inline answers to request_file: checked against their id, hashed once, stored all or nothing."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from kachery_tasks.errors import CorruptContentError
from kachery_tasks.network.channels import files
from kachery_tasks.nodes import current_node
from kachery_tasks.storage import local
from kachery_tasks.storage.local import get_store


@pytest.fixture
def store(node_path):
    node_path.mkdir()
    return get_store(current_node().dir)


def answer(data: bytes) -> SimpleNamespace:
    return SimpleNamespace(sender="cd" * 32, body={"data": base64.b64encode(data).decode()})


def test_inline_bytes_are_hashed_once(store, monkeypatch):
    data = b"inline content"
    sha256 = hashlib.sha256(data).hexdigest()
    hashed: list[int] = []
    digest_bytes = local.digest_bytes
    monkeypatch.setattr(local, "digest_bytes",
                        lambda d, *a, **k: hashed.append(len(d)) or digest_bytes(d, *a, **k))
    monkeypatch.setattr(files, "hashlib", SimpleNamespace(
        sha256=lambda d=b"": hashed.append(len(d)) or hashlib.sha256(d)))
    path = files._store_inline(store, f"sha256://{sha256}?label=a.txt", sha256, answer(data))
    assert Path(path).read_bytes() == data
    assert hashed == [len(data)]


@pytest.mark.parametrize("sent", [b"fake", None])
def test_inline_bytes_that_do_not_match_are_not_stored(store, sent):
    sha256 = "4" * 64
    bad = answer(sent) if sent is not None else SimpleNamespace(sender="cd" * 32,
                                                                 body={"data": "not base64!"})
    with pytest.raises(CorruptContentError, match="do not match its id; nothing was stored"):
        files._store_inline(store, f"sha256://{sha256}", sha256, bad)
    assert not store.has(f"sha256://{sha256}")
