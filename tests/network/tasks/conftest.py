"""Fixtures for claims: a channel bucket on each backend (file:// and gs://), keys, slow renames."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kachery_tasks.keys import KeyPair
from kachery_tasks.storage.buckets import open_bucket
from tests.network.channels.conftest import admitting_broker, lab  # noqa: F401 - fixtures


@pytest.fixture(params=["file", "gs"])
def bucket_url(request, tmp_path) -> str:
    """The URL of a fresh, empty bucket: a directory, or one in the fake GCS server."""
    if request.param == "file":
        return f"file://{tmp_path}/bucket"
    return request.getfixturevalue("gcs_bucket_url")


@pytest.fixture
def bucket(bucket_url):
    opened = open_bucket(bucket_url)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def keys() -> list[KeyPair]:
    """Node keys: members 0-7 of the channel (the tests trust them) and a stranger (8)."""
    return [KeyPair.generate() for _ in range(9)]


class _SlowRenames:
    """``os`` for file:// buckets whose renames are slow (a busy network share): a write
    that checked the generation lands late, which is where file:// replace races."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def replace(src, dst):
        time.sleep(0.02)
        os.replace(src, dst)


@pytest.fixture
def slow_renames(monkeypatch):
    """Make every file:// bucket rename wait 20 ms after its generation check."""
    from kachery_tasks.storage.buckets import local

    monkeypatch.setattr(local, "os", _SlowRenames())


def _in_threads(action, n: int) -> list:
    """``action(i)`` for i in range(n), all started at once; the results by i."""
    start = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        start.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert None not in results, "a thread did not finish"
    return results


@pytest.fixture
def in_threads():
    """``in_threads(action, n)``: ``action(i)`` in n threads started at once; results by i."""
    return _in_threads
