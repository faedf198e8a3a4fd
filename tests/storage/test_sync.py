"""Transfers through a bucket between two node directories, on file:// and on gs://."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

import kachery_tasks as kachery
from kachery_tasks.config import init_node_dir
from kachery_tasks.errors import ContentNotFoundError, CorruptContentError
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.local import get_store
from kachery_tasks.storage.sync import (
    blob_key,
    chunk_key,
    download,
    download_data,
    in_bucket,
    manifest_key,
    upload,
    upload_data,
)
from kachery_tasks.uris import parse_uri
from tests.storage.nodes import _node, _shared


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


def test_a_zarr_array_goes_up_whole_index_last_and_reads_lazily_elsewhere(
    tmp_path, bucket_url, monkeypatch
):
    import numpy as np

    from kachery_tasks.storage.zarr_store import ContentStore
    from kachery_tasks.zarr_arrays import load_zarr, store_zarr

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "a"))
    a = np.arange(60 * 60, dtype="f8").reshape(60, 60)
    uri = store_zarr(a, chunks=(20, 20))
    members = set(ContentStore.from_uri(uri, current_node()).blobs().values())
    bucket = open_bucket(bucket_url)
    puts: list[str] = []
    real_put = type(bucket).put

    def put(self, key, data, **options):
        puts.append(key)
        return real_put(self, key, data, **options)

    monkeypatch.setattr(type(bucket), "put", put)
    report = upload(current_node().store, bucket, uri)
    index_key = f"blobs/sha256/{parse_uri(uri).hex}"
    assert puts[-1] == index_key  # the index after everything it names
    assert {k.rsplit("/", 1)[1] for k in puts[:-1]} == members
    assert report.objects_written == len(members) + 1
    assert upload(current_node().store, bucket, uri).objects_written == 0  # already there

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
    assert current_node().store.info(uri).size < 16 * 1024  # the index itself is small
    from kachery_tasks.storage.zarr_store import ContentStore

    blobs = ContentStore.from_uri(uri, current_node()).blobs()
    chunk_blobs = [h for k, h in blobs.items() if k.startswith("c/")]
    assert all(current_node().store.info(f"sha256://{h}").chunks >= 2 for h in chunk_blobs)
    upload(current_node().store, open_bucket(bucket_url), uri)
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
    upload(current_node().store, bucket, uri)
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "b"))  # no bucket configured here
    b = current_node().store
    assert download_members(b, bucket, uri) == 17  # 16 chunks and zarr.json
    assert missing_blobs(uri) == []
    np.testing.assert_array_equal(load_zarr(uri)[:], a)  # read with no bucket at all
    assert download_members(b, bucket, uri) == 0  # nothing left to fetch
    plain = get_store(init_node_dir(tmp_path / "a")).store_bytes(b"not an array")
    upload(get_store(init_node_dir(tmp_path / "a")), bucket, plain)
    assert download_members(b, bucket, plain) == 0 and b.has(plain)


def test_an_array_whose_index_is_over_the_chunk_size_travels_and_is_kept(
    tmp_path, bucket_url, monkeypatch
):
    """An index larger than the chunk size is itself chunked: its members still go
    up before it, and gc still keeps them when it is pinned."""
    import numpy as np

    from kachery_tasks.storage.zarr_store import ContentStore
    from kachery_tasks.zarr_arrays import load_zarr, store_zarr

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text('[store]\nchunk_size = "1KiB"\n')
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "a"))
    a = np.arange(64 * 8, dtype="i4").reshape(64, 8)
    uri = store_zarr(a, chunks=(1, 8))  # 64 chunks: an index of several KiB
    store = current_node().store
    assert store.info(uri).chunks > 1  # the index has a manifest
    members = set(ContentStore.from_uri(uri, current_node()).blobs().values())
    store.pin(uri)
    store.gc(0, grace=0)
    assert all(store.has(f"sha256://{h}") for h in members)
    upload(store, open_bucket(bucket_url), uri)
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", bucket_url)
    np.testing.assert_array_equal(load_zarr(uri)[:], a)


def _damage(path, at=0):
    """Flip a byte of a stored (read-only) blob, as a failing disk would."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("size", [1000, 5 * 65536 + 17])
def test_upload_sends_nothing_damaged_and_stops_serving_it(tmp_path, bucket_url, size):
    a = _node(tmp_path, "a")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(os.urandom(size))
    _damage(a.load_file(uri), at=size - 10)  # in the last chunk of a large file
    with pytest.raises(CorruptContentError, match="removed"):
        upload(a, bucket, uri, threads=2)
    assert not a.has(uri)
    sha256 = parse_uri(uri).hex
    assert not in_bucket(bucket, sha256)
    m_chunks = list(bucket.list("chunks/"))
    for key in m_chunks:  # the good chunks may be there; every one is what its name says
        assert hashlib.sha256(bucket.get(key)).hexdigest() == key.rsplit("/", 1)[1]


def test_a_damaged_chunk_in_the_bucket_is_reported_and_repaired(tmp_path, bucket_url):
    data = os.urandom(4 * 65536)
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(data)
    victim = a.manifest(uri).chunks[2]
    bucket.put(chunk_key(victim.sha256), os.urandom(victim.size))  # a bad upload got there first
    upload(a, bucket, uri)  # a plain upload trusts an object of the right size
    with pytest.raises(CorruptContentError, match="upload --repair") as e:
        download(b, bucket, uri)
    assert "\n" not in str(e.value) and victim.sha256 in str(e.value)
    report = upload(a, bucket, uri, repair=True)
    assert report.objects_repaired == 1 and report.objects_written == 0
    with open(download(b, bucket, uri), "rb") as f:
        assert f.read() == data
    again = upload(a, bucket, uri, repair=True)
    assert again.objects_repaired == again.objects_written == 0


def test_repair_writes_missing_objects_and_a_damaged_manifest_and_blob(tmp_path, bucket_url):
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    big, small = os.urandom(3 * 65536), b"small content"
    big_uri, small_uri = a.store_bytes(big), a.store_bytes(small)
    upload(a, bucket, big_uri)
    upload(a, bucket, small_uri)
    big_hex, small_hex = parse_uri(big_uri).hex, parse_uri(small_uri).hex
    bucket.delete(chunk_key(a.manifest(big_uri).chunks[0].sha256))
    for key, junk in ((manifest_key(big_hex), b"{not json"), (blob_key(small_hex), b"x" * 13)):
        bucket.replace(key, junk, bucket.stat(key).generation)
    with pytest.raises(CorruptContentError, match="upload --repair"):
        download(b, bucket, big_uri)
    with pytest.raises(CorruptContentError, match="upload --repair"):
        download(b, bucket, small_uri)
    assert upload(a, bucket, big_uri).objects_skipped == 1  # a plain upload sees it there
    r = upload(a, bucket, big_uri, repair=True)
    assert (r.objects_written, r.objects_repaired) == (1, 1)  # the chunk; the manifest
    assert upload(a, bucket, small_uri, repair=True).objects_repaired == 1
    for uri, data in ((big_uri, big), (small_uri, small)):
        with open(download(b, bucket, uri), "rb") as f:
            assert f.read() == data


def test_a_plain_upload_replaces_a_chunk_of_the_wrong_size(tmp_path, bucket_url):
    a = _node(tmp_path, "a")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(os.urandom(3 * 65536))
    victim = a.manifest(uri).chunks[1]
    bucket.put(chunk_key(victim.sha256), b"truncated")
    report = upload(a, bucket, uri)
    assert report.objects_repaired == 1
    assert hashlib.sha256(bucket.get(chunk_key(victim.sha256))).hexdigest() == victim.sha256


def test_a_repair_never_clobbers_a_repair_that_came_first(tmp_path, bucket_url, monkeypatch):
    """Nodes a and c both find a chunk damaged; c replaces it first; a must then write nothing."""
    a, c = _node(tmp_path, "a"), _node(tmp_path, "c")
    bucket = open_bucket(bucket_url)
    data = os.urandom(2 * 65536)
    uri = a.store_bytes(data)
    c.store_bytes(data)
    victim = chunk_key(a.manifest(uri).chunks[0].sha256)
    bucket.put(victim, os.urandom(65536))
    upload(a, bucket, uri)
    real_get_into = type(bucket).get_into
    theirs = []

    def get_into(self, key, *args, **kwargs):
        n = real_get_into(self, key, *args, **kwargs)
        if key == victim and not theirs:  # node a found it damaged; node c repairs it now
            theirs.append("running")
            theirs[0] = upload(c, bucket, uri, repair=True)
            theirs.append(bucket.stat(key))
        return n

    monkeypatch.setattr(type(bucket), "get_into", get_into)
    mine = upload(a, bucket, uri, repair=True)
    monkeypatch.undo()
    assert theirs[0].objects_repaired == 1 and mine.objects_repaired == 0
    assert bucket.stat(victim) == theirs[1]  # c's object, untouched
    assert hashlib.sha256(bucket.get(victim)).hexdigest() == victim.rsplit("/", 1)[1]


def test_upload_reports_each_blob_and_chunk_as_it_is_in_the_bucket(tmp_path, bucket_url):
    a = _node(tmp_path, "a")
    bucket = open_bucket(bucket_url)
    big = a.store_bytes(os.urandom(3 * 65536 + 5))
    small = a.store_bytes(b"tiny")
    seen: list[int] = []
    upload(a, bucket, big, on_progress=seen.append, threads=2)
    assert sorted(seen) == sorted(c.size for c in a.manifest(big).chunks)
    seen.clear()
    upload(a, bucket, small, on_progress=seen.append)
    assert seen == [4]


def test_small_content_goes_up_and_comes_down_in_memory_verified(bucket_url):
    from kachery_tasks.errors import InvalidValueError
    from kachery_tasks.storage.zarr_index import INDEX_PREFIX

    bucket = open_bucket(bucket_url)
    data = b"a small result"
    uri = f"sha256://{hashlib.sha256(data).hexdigest()}?label=r.json"
    assert upload_data(bucket, data, uri).objects_written == 1
    assert upload_data(bucket, data, uri).objects_skipped == 1  # create-only
    assert download_data(bucket, uri, 100) == data
    assert download_data(bucket, uri, 5) is None  # over the size asked for: the store's
    missing = f"sha256://{hashlib.sha256(b'other').hexdigest()}"
    assert download_data(bucket, missing, 100) is None
    with pytest.raises(CorruptContentError, match="hash"):
        upload_data(bucket, b"not it", missing)
    index = INDEX_PREFIX + b"}"
    index_uri = f"sha256://{hashlib.sha256(index).hexdigest()}"
    with pytest.raises(InvalidValueError, match="zarr"):
        upload_data(bucket, index, index_uri)  # its members go first, from a store
    bucket.put(blob_key(parse_uri(index_uri).hex), index)
    assert download_data(bucket, index_uri, 100) is None  # an index goes to the store
    sha = parse_uri(uri).hex
    bucket.delete(blob_key(sha))
    bucket.put(blob_key(sha), b"a smell result")  # damaged in the bucket
    with pytest.raises(CorruptContentError, match="corrupted"):
        download_data(bucket, uri, 100)
