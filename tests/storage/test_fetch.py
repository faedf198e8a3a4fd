"""Chunk fetching: each chunk verified on arrival, hashing during the transfer,
resumable after an interruption; on file:// and on gs://."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kachery_tasks.errors import CorruptContentError, TransferError
from kachery_tasks.storage.sync import chunk_key, download
from kachery_tasks.uris import parse_uri
from tests.storage.nodes import _shared


def test_corrupt_chunk_is_named_and_nothing_is_stored(tmp_path, bucket_url):
    a, b, bucket, uri = _shared(tmp_path, bucket_url, os.urandom(4 * 65536))
    victim = a.manifest(uri).chunks[2]
    bucket.delete(chunk_key(victim.sha256))
    bucket.put(chunk_key(victim.sha256), os.urandom(victim.size))
    with pytest.raises(CorruptContentError, match=f"chunk 2 \\(sha256 {victim.sha256}"):
        download(b, bucket, uri, threads=1)
    assert not b.has(uri)
    assert b.index.stored_bytes() == (0, 0)


class FlakyBucket:
    """Wraps a bucket; chunk reads fail after ``budget`` successes (a dropped network)."""

    def __init__(self, inner, budget):
        self.inner, self.budget, self.gets = inner, budget, 0
        self.url = inner.url
        self.lock = threading.Lock()

    def _spend(self, key):
        if key.startswith("chunks/"):
            with self.lock:
                if self.budget <= 0:
                    raise TransferError("network gone")
                self.budget -= 1
                self.gets += 1

    def get(self, key, start=0, end=None):
        self._spend(key)
        return self.inner.get(key, start, end)

    def get_into(self, key, consume, start=0, end=None):
        self._spend(key)
        return self.inner.get_into(key, consume, start, end)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_interrupted_download_resumes(tmp_path, bucket_url):
    data = os.urandom(10 * 65536)
    _a, b, bucket, uri = _shared(tmp_path, bucket_url, data)
    first = FlakyBucket(bucket, budget=4)
    with pytest.raises(TransferError):
        download(b, first, uri, threads=1)
    assert not b.has(uri)
    second = FlakyBucket(bucket, budget=100)
    with open(download(b, second, uri, threads=3), "rb") as f:
        assert f.read() == data
    assert second.gets == 10 - first.gets == 6


def test_chunks_are_recorded_and_hashed_while_others_are_in_flight(tmp_path, bucket_url):
    data = os.urandom(6 * 65536)
    a, b, bucket, uri = _shared(tmp_path, bucket_url, data)
    last = chunk_key(a.manifest(uri).chunks[-1].sha256)
    done_path = b.incoming / f"partial-{parse_uri(uri).hex}.done"
    seen = []

    class LastChunkWaits:
        """The last chunk is only read once the .done file records chunk 0."""

        url = bucket.url

        def get_into(self, key, consume, start=0, end=None):
            if key == last:
                for _ in range(1000):
                    if done_path.exists() and "0" in done_path.read_text().split("\n")[1:]:
                        break
                    threading.Event().wait(0.01)
                seen.append(done_path.read_text().split("\n")[1:])
            return bucket.get_into(key, consume, start, end)

        def __getattr__(self, name):
            return getattr(bucket, name)

    with open(download(b, LastChunkWaits(), uri, threads=6), "rb") as f:
        assert f.read() == data
    assert "0" in seen[0]


def test_a_failure_releases_fetches_held_back_for_the_hashing(tmp_path, bucket_url, monkeypatch):
    from kachery_tasks.storage import fetch

    monkeypatch.setattr(fetch, "_AHEAD", -1)  # with 2 threads, chunk 1 waits for chunk 0's hash
    a, b, bucket, uri = _shared(tmp_path, bucket_url, os.urandom(4 * 65536))
    victim = a.manifest(uri).chunks[0]
    bucket.delete(chunk_key(victim.sha256))
    bucket.put(chunk_key(victim.sha256), os.urandom(victim.size + 1))  # too long, too
    with ThreadPoolExecutor(1) as pool:
        error = pool.submit(download, b, bucket, uri, threads=2).exception(timeout=30)
    assert isinstance(error, CorruptContentError)  # (a TimeoutError if the download hung)
    assert f"chunk 0 (sha256 {victim.sha256}" in str(error)
    assert not b.has(uri)
