"""Chunk fetching: each chunk verified on arrival, hashing during the transfer,
resumable after an interruption; on file:// and on gs://."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kachery_tasks.errors import CorruptContentError, StorageFullError, TransferError
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


class ChunkHookBucket:
    """Wraps a bucket; ``on_chunk(key)`` runs before every chunk read (fail, wait, count)."""

    def __init__(self, inner):
        self.inner, self.url = inner, inner.url

    def on_chunk(self, key):
        pass

    def get(self, key, start=0, end=None):
        if key.startswith("chunks/"):
            self.on_chunk(key)
        return self.inner.get(key, start, end)

    def get_into(self, key, consume, start=0, end=None):
        if key.startswith("chunks/"):
            self.on_chunk(key)
        return self.inner.get_into(key, consume, start, end)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FlakyBucket(ChunkHookBucket):
    """Chunk reads fail after ``budget`` successes (a dropped network)."""

    def __init__(self, inner, budget):
        super().__init__(inner)
        self.budget, self.gets = budget, 0
        self.lock = threading.Lock()

    def on_chunk(self, key):
        with self.lock:
            if self.budget <= 0:
                raise TransferError("network gone")
            self.budget -= 1
            self.gets += 1


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


class PausedBucket(ChunkHookBucket):
    """Every chunk read waits until ``release`` is set."""

    def __init__(self, inner):
        super().__init__(inner)
        self.reading, self.release = threading.Event(), threading.Event()

    def on_chunk(self, key):
        self.reading.set()
        self.release.wait(30)


def test_two_downloads_of_one_file_on_one_node_both_succeed(tmp_path, bucket_url):
    data = os.urandom(6 * 65536)
    _a, b, bucket, uri = _shared(tmp_path, bucket_url, data)
    paused = PausedBucket(bucket)
    results = {}

    def run(name, source):
        try:
            results[name] = download(b, source, uri, threads=2)
        except Exception as e:
            results[name] = e

    first = threading.Thread(target=run, args=("first", paused))
    first.start()
    assert paused.reading.wait(30)  # the first download is writing its partial file
    second = threading.Thread(target=run, args=("second", bucket))
    second.start()
    second.join(1.0)  # the window: a second download that does not wait runs now
    paused.release.set()
    first.join(60)
    second.join(60)
    assert results["first"] == results["second"] == b.load_file(uri), results
    with open(results["first"], "rb") as f:
        assert f.read() == data
    assert os.listdir(b.incoming) == []


def test_a_full_disk_fails_the_download_and_leaves_nothing(tmp_path, bucket_url, monkeypatch):
    from kachery_tasks.storage import fetch

    _a, b, bucket, uri = _shared(tmp_path, bucket_url, os.urandom(6 * 65536))
    real_write = fetch.write_all
    writes = []

    def write_all(fd, data, offset=None):
        writes.append(len(data))
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data, offset)

    monkeypatch.setattr(fetch, "write_all", write_all)
    with pytest.raises(StorageFullError) as e:
        download(b, bucket, uri, threads=2)
    message = str(e.value)
    assert "no space left" in message and "partial download was removed" in message
    assert parse_uri(uri).hex in message and "\n" not in message
    assert os.listdir(b.incoming) == [] and not b.has(uri)


def test_the_whole_file_check_catches_what_a_chunk_check_let_through(
    tmp_path, bucket_url, monkeypatch
):
    from kachery_tasks.storage import fetch

    a, b, bucket, uri = _shared(tmp_path, bucket_url, os.urandom(4 * 65536))
    victim = a.manifest(uri).chunks[1]
    bucket.delete(chunk_key(victim.sha256))
    bucket.put(chunk_key(victim.sha256), os.urandom(victim.size))
    monkeypatch.setattr(fetch, "check_chunk", lambda *args: None)  # as if it had missed it
    with pytest.raises(CorruptContentError, match="downloaded content hashes to"):
        download(b, bucket, uri, threads=2)
    assert not b.has(uri) and b.index.stored_bytes() == (0, 0)
    assert os.listdir(b.incoming) == []


class CountingBucket(ChunkHookBucket):
    def __init__(self, inner):
        super().__init__(inner)
        self.chunks = []

    def on_chunk(self, key):
        self.chunks.append(key.rsplit("/", 1)[1])


def test_a_resumed_download_verifies_the_chunks_it_had_again(tmp_path, bucket_url):
    import json

    data = os.urandom(5 * 65536)
    a, b, bucket, uri = _shared(tmp_path, bucket_url, data)
    sha256, m = parse_uri(uri).hex, a.manifest(uri)
    # An earlier attempt recorded chunks 0, 1 and 2, but chunk 1 lost bytes on disk.
    planted = bytearray(data[: 3 * 65536])
    planted[65536 + 100] ^= 0xFF
    (b.incoming / f"partial-{sha256}").write_bytes(bytes(planted))
    (b.incoming / f"partial-{sha256}.done").write_text(
        json.dumps({"manifest": m.to_json().decode()}) + "\n0\n1\n2\n"
    )
    counting = CountingBucket(bucket)
    with open(download(b, counting, uri, threads=2), "rb") as f:
        assert f.read() == data
    assert sorted(counting.chunks) == sorted(m.chunks[i].sha256 for i in (1, 3, 4))
