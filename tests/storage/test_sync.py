"""Transfers through a bucket between two node directories, on file:// and on gs://."""

from __future__ import annotations

import os
import threading

import pytest

import kachery_tasks as kachery
from kachery_tasks.config import init_node_dir
from kachery_tasks.errors import ContentNotFoundError, CorruptContentError, TransferError
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.local import get_store
from kachery_tasks.storage.sync import chunk_key, download, in_bucket, manifest_key, upload
from kachery_tasks.uris import parse_uri


@pytest.fixture(params=["file", "gs"])
def bucket_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/bucket"
    return request.getfixturevalue("gcs_bucket_url")


def _node(tmp_path, name, chunk="64KiB"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.toml").write_text(f'[store]\nchunk_size = "{chunk}"\n')
    return get_store(init_node_dir(path))


def _shared(tmp_path, bucket_url, data: bytes):
    """Nodes a and b, the bucket, and ``data`` stored by a and uploaded."""
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(data)
    upload(a, bucket, uri)
    return a, b, bucket, uri


def test_small_and_large_files_travel_between_nodes(tmp_path, bucket_url):
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    small = a.store_bytes(b"small content", label="s.txt")
    big_data = os.urandom(5 * 65536 + 123)
    big = a.store_bytes(big_data, label="big.bin")
    for uri in (small, big):
        r = upload(a, bucket, uri)
        assert r.objects_written >= 1
        assert in_bucket(bucket, parse_uri(uri).hex)
    assert bucket.exists(chunk_key(a.manifest(big).chunks[0].sha256))
    with open(download(b, bucket, big), "rb") as f:
        assert f.read() == big_data
    with open(download(b, bucket, small), "rb") as f:
        assert f.read() == b"small content"
    assert b.info(big).chunks == 6 and b.info(big).label == "big.bin"
    assert os.listdir(b.incoming) == []
    again = upload(a, bucket, big)
    assert again.objects_written == 0 and again.objects_skipped == 1


def test_load_file_falls_back_to_the_configured_bucket(tmp_path, bucket_url, monkeypatch):
    a = _node(tmp_path, "a")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(os.urandom(200_000))
    upload(a, bucket, uri)
    with pytest.raises(ContentNotFoundError):
        kachery.load_file(uri)
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", bucket_url)
    path = kachery.load_file(uri)
    with open(path, "rb") as f, open(a.load_file(uri), "rb") as g:
        assert f.read() == g.read()
    with pytest.raises(ContentNotFoundError, match="nor in bucket"):
        kachery.load_file("sha256://" + "0" * 64)


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


def test_two_nodes_uploading_the_same_content_at_once(tmp_path, bucket_url):
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    data = os.urandom(6 * 65536)
    uris = [a.store_bytes(data), b.store_bytes(data)]
    errors = []

    def up(store, uri):
        try:
            upload(store, bucket, uri, threads=4)
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=up, args=(s, u)) for s, u in zip((a, b), uris)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(bucket.list("chunks/"))) == 6
    assert list(bucket.list("manifests/")) == [manifest_key(parse_uri(uris[0]).hex)]


@pytest.mark.slow
def test_100_mib_file_between_node_directories(tmp_path, bucket_url):
    a, b = _node(tmp_path, "a", chunk="20MiB"), _node(tmp_path, "b", chunk="20MiB")
    bucket = open_bucket(bucket_url)
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(2**20))
    uri = a.store_file(src)
    upload(a, bucket, uri)
    path = download(b, bucket, uri)
    assert b.verify().corrupt == []
    assert os.path.getsize(path) == 100 * 2**20
    assert parse_uri(uri).hex == b.info(uri).sha256


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
    errors = []

    def run():
        try:
            download(b, bucket, uri, threads=2)
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the download hung"
    assert len(errors) == 1 and isinstance(errors[0], CorruptContentError)
    assert f"chunk 0 (sha256 {victim.sha256}" in str(errors[0])
    assert not b.has(uri)


def test_a_zarr_array_goes_up_whole_index_last_and_reads_lazily_elsewhere(
    tmp_path, bucket_url, monkeypatch
):
    import numpy as np

    from kachery_tasks.storage.zarr_store import ContentStore
    from kachery_tasks.zarr_arrays import load_zarr, store_zarr

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "a"))
    a = np.arange(60 * 60, dtype="f8").reshape(60, 60)
    uri = store_zarr(a, chunks=(20, 20))
    members = set(ContentStore.from_uri(uri).blobs().values())
    bucket = open_bucket(bucket_url)
    puts: list[str] = []
    real_put = type(bucket).put

    def put(self, key, data):
        puts.append(key)
        return real_put(self, key, data)

    monkeypatch.setattr(type(bucket), "put", put)
    report = upload(get_store(), bucket, uri)
    index_key = f"blobs/sha256/{parse_uri(uri).hex}"
    assert puts[-1] == index_key  # the index after everything it names
    assert {k.rsplit("/", 1)[1] for k in puts[:-1]} == members
    assert report.objects_written == len(members) + 1
    assert upload(get_store(), bucket, uri).objects_written == 0  # already there

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", bucket_url)
    z = load_zarr(uri)
    np.testing.assert_array_equal(z[25:35, 5:45], a[25:35, 5:45])
    np.testing.assert_array_equal(z[:], a)


def test_uploading_content_the_bucket_has_needs_no_local_copy(tmp_path, bucket_url):
    _a, b, bucket, uri = _shared(tmp_path, bucket_url, b"shared already")
    assert upload(b, bucket, uri).objects_skipped == 1


def test_nodes_with_different_chunk_sizes_exchange_files(tmp_path, bucket_url):
    a = _node(tmp_path, "a", chunk="64KiB")
    b = _node(tmp_path, "b", chunk="1MiB")
    c = _node(tmp_path, "c", chunk="16KiB")
    data = os.urandom(300 * 1024)
    uri = a.store_bytes(data)
    upload(a, open_bucket(bucket_url), uri)
    download(b, open_bucket(bucket_url), uri)
    m = b.manifest(uri)  # kept as the uploader cut it: 64 KiB chunks
    assert m is not None and m.chunk_size == 64 * 1024 and len(m.chunks) == 5
    assert b.info(uri).chunks == 5
    other = open_bucket(f"file://{tmp_path}/other-bucket")
    upload(b, other, uri)  # passed on by a node that did not cut it
    with open(download(c, other, uri), "rb") as f:
        assert f.read() == data


def test_a_zarr_array_with_chunks_over_the_chunk_size_travels(tmp_path, bucket_url, monkeypatch):
    import numpy as np

    from kachery_tasks.zarr_arrays import load_zarr, store_zarr

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text('[store]\nchunk_size = "16KiB"\n')
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "a"))
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 256))  # zarr chunks of 8 x 256 float64 = 16 KiB + header
    uri = store_zarr(a, chunks=(16, 256))  # 32 KiB chunks: each a blob with a manifest
    assert get_store().info(uri).size < 16 * 1024  # the index itself is small
    from kachery_tasks.storage.zarr_store import ContentStore

    chunk_blobs = [h for k, h in ContentStore.from_uri(uri).blobs().items() if k.startswith("c/")]
    assert all(get_store().info(f"sha256://{h}").chunks >= 2 for h in chunk_blobs)
    upload(get_store(), open_bucket(bucket_url), uri)
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", bucket_url)
    np.testing.assert_array_equal(load_zarr(uri)[20:40, 100:120], a[20:40, 100:120])


def test_download_members_makes_a_whole_array_local(tmp_path, bucket_url, monkeypatch):
    import numpy as np

    from kachery_tasks.storage.sync import download_members
    from kachery_tasks.zarr_arrays import load_zarr, missing_blobs, store_zarr

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "a"))
    a = np.arange(40 * 40, dtype="f8").reshape(40, 40)
    uri = store_zarr(a, chunks=(10, 10))
    bucket = open_bucket(bucket_url)
    upload(get_store(), bucket, uri)
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "b"))  # no bucket configured here
    b = get_store()
    assert download_members(b, bucket, uri) == 17  # 16 chunks and zarr.json
    assert missing_blobs(uri) == []
    np.testing.assert_array_equal(load_zarr(uri)[:], a)  # read with no bucket at all
    assert download_members(b, bucket, uri) == 0  # nothing left to fetch
    plain = get_store(init_node_dir(tmp_path / "a")).store_bytes(b"not an array")
    upload(get_store(init_node_dir(tmp_path / "a")), bucket, plain)
    assert download_members(b, bucket, plain) == 0 and b.has(plain)
