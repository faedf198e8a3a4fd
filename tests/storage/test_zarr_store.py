"""The zarr v3 content store: zarr's own store conformance tests plus round trips.

``TestContentStoreConformance`` runs ``zarr.testing.store.StoreTests`` against a
writable ``ContentStore`` (async tests run through anyio's pytest plugin).
Adapted because of content addressing:

* ``store``/``store_not_open`` are plain (not async) fixtures so zarr's sync
  tests can use them under anyio's plugin (pytest-asyncio is not a dependency).
* ``store_kwargs`` is empty (a fresh writable store); the tests' backdoor
  ``set`` writes a blob with ``LocalStore.store_bytes`` and edits the key
  index directly, since a key can only name a blob through the index; ``get``
  reads the blob a key names, flushed or still pending in the store's batch.
* ``test_store_eq``: two stores are equal when their key indexes (and
  read-only flags) are equal, so the equal-inputs case holds as written.
* Deletes and ``clear`` drop index entries only; blobs may be shared with
  other arrays and are reclaimed by ``gc``, so nothing is skipped for that,
  but a test that checks the blob is gone would not apply (zarr has none).

No StoreTests test is skipped: ContentStore also implements get_sync /
set_sync / delete_sync, so the sync-protocol tests run too.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import zarr
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.store import StoreTests

from kachery_tasks.errors import (
    ContentNotFoundError,
    InvalidURIError,
    KacheryError,
    StorageError,
)
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.zarr_store import ContentStore
from kachery_tasks.uris import parse_uri
from kachery_tasks.zarr_arrays import load_zarr, store_zarr


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
class TestContentStoreConformance(StoreTests[ContentStore, cpu.Buffer]):
    store_cls = ContentStore
    buffer_cls = cpu.Buffer

    async def set(self, store: ContentStore, key: str, value: Buffer) -> None:
        uri = current_node().store.store_bytes(value.to_bytes())
        store._keys[key] = parse_uri(uri).hex

    async def get(self, store: ContentStore, key: str) -> Buffer:
        with open(store._blob_path(store._keys[key]), "rb") as f:
            return self.buffer_cls.from_bytes(f.read())

    @pytest.fixture
    def store_kwargs(self) -> dict:
        return {"source": current_node()}

    # StoreTests declares these fixtures async; anyio only runs async fixtures
    # for async tests, so they are plain fixtures here (same stores as
    # ``await ContentStore.open(**kwargs, source=current_node())`` / ``ContentStore(**kwargs)``).
    @pytest.fixture
    def store(self, open_kwargs: dict) -> ContentStore:
        return sync(ContentStore.open(**open_kwargs))

    @pytest.fixture
    def store_not_open(self, store_kwargs: dict) -> ContentStore:
        return ContentStore(**store_kwargs)

    def test_store_repr(self, store: ContentStore) -> None:
        assert repr(store).startswith("ContentStore('kachery-zarr://")

    def test_store_supports_writes(self, store: ContentStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ContentStore) -> None:
        assert store.supports_listing


def _blob_count() -> int:
    return current_node().store.index.stored_bytes()[0]


def test_import_kachery_tasks_does_not_import_zarr():
    import subprocess

    code = "import sys, kachery_tasks; print('zarr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ})
    assert out.stdout.strip() == "False"


def test_round_trip_numpy():
    a = np.arange(2000, dtype="f4").reshape(40, 50)
    uri = store_zarr(a, chunks=(10, 10))
    assert parse_uri(uri).algorithm == "sha256"
    z = load_zarr(uri)
    assert isinstance(z, zarr.Array)
    assert z.shape == a.shape and z.dtype == a.dtype and z.chunks == (10, 10)
    np.testing.assert_array_equal(z[:], a)
    assert z.read_only
    with pytest.raises(ValueError):
        z[0, 0] = 1


def test_equal_arrays_give_equal_uris():
    a = np.random.default_rng(0).integers(0, 100, size=(30, 30), dtype="i8")
    assert store_zarr(a, chunks=(10, 10)) == store_zarr(a.copy(), chunks=(10, 10))


def test_round_trip_zarr_array_keeps_attrs_and_chunks():
    src = zarr.create_array(zarr.storage.MemoryStore(), shape=(25, 7), chunks=(5, 7),
                            dtype="i2", attributes={"units": "mV"})
    src[:] = np.arange(175, dtype="i2").reshape(25, 7)
    z = load_zarr(store_zarr(src))
    assert z.chunks == (5, 7)
    assert z.attrs["units"] == "mV"
    np.testing.assert_array_equal(z[:], src[:])


def test_sealed_index_format():
    import json

    uri = store_zarr(np.zeros(4, dtype="u1"), chunks=(2,))
    with open(current_node().store.load_file(uri), "rb") as f:
        doc = json.loads(f.read())
    assert doc["format"] == "kachery-tasks/zarr/1"
    assert "zarr.json" in doc["keys"]
    for h in doc["keys"].values():
        assert current_node().store.has(f"sha256://{h}")


def test_one_changed_chunk_adds_one_chunk_blob():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 40)).astype("f8")
    store_zarr(a, chunks=(10, 10))
    before = _blob_count()
    b = a.copy()
    b[15, 15] += 1.0  # inside chunk (1, 1)
    uri = store_zarr(b, chunks=(10, 10))
    # one new chunk blob plus the new index; zarr.json is shared
    assert _blob_count() - before == 2
    np.testing.assert_array_equal(load_zarr(uri)[:], b)


def test_shared_chunks_are_shared_blobs():
    s1, s2 = ContentStore(source=current_node()), ContentStore(source=current_node())
    a = np.ones((20,), dtype="i4")
    zarr.create_array(s1, data=a, chunks=(10,))
    zarr.create_array(s2, data=np.concatenate([a[:10], a[10:] * 2]), chunks=(10,))
    assert s1.blobs()["c/0"] == s2.blobs()["c/0"]
    assert s1.blobs()["c/1"] != s2.blobs()["c/1"]


def test_reading_a_slice_touches_only_needed_chunks(monkeypatch):
    from kachery_tasks.nodes import Node

    a = np.arange(100 * 100, dtype="f4").reshape(100, 100)
    uri = store_zarr(a, chunks=(10, 10))
    hashes = ContentStore.from_uri(uri, current_node()).blobs()
    by_hash = {h: k for k, h in hashes.items()}
    touched: list[str] = []
    real = Node.local_path

    def spy(node, u: str, *args) -> str:
        touched.append(by_hash.get(parse_uri(u).hex, "index"))
        return real(node, u, *args)

    monkeypatch.setattr(Node, "local_path", spy)
    z = load_zarr(uri)
    touched.clear()
    np.testing.assert_array_equal(z[12:18, 35:45], a[12:18, 35:45])
    assert sorted(touched) == ["c/1/3", "c/1/4"]


def test_reading_a_slice_fetches_only_needed_chunks_from_the_bucket(tmp_path, monkeypatch):
    """A node without the array fetches the index, metadata and touched chunks only."""
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.sync import upload

    a = np.arange(64, dtype="i8").reshape(8, 8)
    uri = store_zarr(a, chunks=(4, 4))
    hashes = ContentStore.from_uri(uri, current_node()).blobs()
    bucket_url = f"file://{tmp_path}/bucket"
    bucket = open_bucket(bucket_url)
    for h in [parse_uri(uri).hex, *hashes.values()]:
        upload(current_node().store, bucket, f"sha256://{h}")

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "other-node"))
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", bucket_url)
    other = current_node().store
    assert other.index.stored_bytes()[0] == 0
    z = load_zarr(uri)
    np.testing.assert_array_equal(z[5:7, 1:3], a[5:7, 1:3])
    here = {k for k, h in hashes.items() if other.has(f"sha256://{h}")}
    assert here == {"zarr.json", "c/1/0"}
    assert other.has(uri)


def test_load_zarr_bad_uris():
    with pytest.raises(InvalidURIError):
        load_zarr("not a uri")
    with pytest.raises(ContentNotFoundError):
        load_zarr("sha256://" + "0" * 64)
    not_index = current_node().store.store_bytes(b'{"hello": 1}')
    with pytest.raises(StorageError, match="not a kachery-tasks zarr array"):
        load_zarr(not_index)
    garbage = current_node().store.store_bytes(b"\x00\x01garbage")
    with pytest.raises(KacheryError):
        load_zarr(garbage)


def test_read_only_store_refuses_writes():
    uri = store_zarr(np.zeros(3), chunks=(3,))
    s = ContentStore.from_uri(uri, current_node())
    assert s.read_only
    with pytest.raises(ValueError, match="read-only"):
        s.set_sync("x", cpu.Buffer.from_bytes(b"1"))
    buf = s.get_sync("zarr.json", prototype=default_buffer_prototype())
    assert buf is not None and b"zarr_format" in buf.to_bytes()


def test_zarr_v2_source_is_stored_as_v3():
    src = zarr.create_array(zarr.storage.MemoryStore(), shape=(10,), chunks=(3,), dtype="i4",
                            zarr_format=2)
    src[:] = np.arange(10, dtype="i4")
    z = load_zarr(store_zarr(src))
    assert z.metadata.zarr_format == 3 and z.chunks == (3,)
    np.testing.assert_array_equal(z[:], np.arange(10))


def test_await_open_with_uri_is_read_only():
    uri = store_zarr(np.arange(6), chunks=(3,))
    s = sync(ContentStore.open(uri, source=current_node()))
    assert s.read_only and s._is_open and s == ContentStore.from_uri(uri, current_node())


def test_gc_keeps_the_chunks_of_a_pinned_array_and_evicts_the_others():
    store = current_node().store
    kept = store_zarr(np.arange(400, dtype="f8").reshape(20, 20), chunks=(10, 10))
    dropped = store_zarr(np.arange(400, dtype="f8").reshape(20, 20) + 0.5, chunks=(10, 10))
    store.pin(kept)
    only_dropped = set(ContentStore.from_uri(dropped, current_node()).blobs().values()) - set(
        ContentStore.from_uri(kept, current_node()).blobs().values()
    )
    assert only_dropped  # the chunks differ
    report = store.gc(0, grace=0)
    assert report.evicted >= len(only_dropped)
    np.testing.assert_array_equal(
        load_zarr(kept)[:], np.arange(400, dtype="f8").reshape(20, 20)
    )
    for h in only_dropped:
        assert not store.has(f"sha256://{h}")
    chunks = set(ContentStore.from_uri(kept, current_node()).blobs().values())
    store.pin(kept, pinned=False)
    store.gc(0, grace=0)
    assert not any(store.has(f"sha256://{h}") for h in chunks)


def test_sealing_flushes_every_chunk_together(monkeypatch):
    """Chunks are written as they come and made durable at seal, before the index."""
    from kachery_tasks.storage import batch as batch_mod

    order: list[str] = []
    real_commit = batch_mod.BlobBatch.commit

    def commit(self):
        order.append(f"commit {len(self)}")
        real_commit(self)

    real_store_bytes = type(current_node().store).store_bytes

    def store_bytes(self, data, label=None):
        order.append(f"store {label}")
        return real_store_bytes(self, data, label)

    monkeypatch.setattr(batch_mod.BlobBatch, "commit", commit)
    monkeypatch.setattr(type(current_node().store), "store_bytes", store_bytes)
    uri = store_zarr(np.arange(100, dtype="i4"), chunks=(10,))
    # 10 chunks + zarr.json in one batch, then the index
    assert order == ["commit 11", "store zarr-index.json"]
    assert os.listdir(current_node().store.incoming) == []
    np.testing.assert_array_equal(load_zarr(uri)[:], np.arange(100, dtype="i4"))


def test_an_index_is_parsed_once_and_handed_out_as_a_copy(monkeypatch):
    from kachery_tasks.storage import zarr_index

    uri = store_zarr(np.arange(100, dtype="i4"), chunks=(10,))
    parsed = []
    real = zarr_index.decode_index

    def counting(data, u):
        parsed.append(u)
        return real(data, u)

    monkeypatch.setattr(zarr_index, "decode_index", counting)
    zarr_index._indexes.clear()
    first = zarr_index.read_index(uri, current_node())
    first["c/0"] = "f" * 64  # a caller's copy: the cache is not touched
    second = zarr_index.read_index(uri, current_node())
    assert len(parsed) == 1 and second["c/0"] != "f" * 64
    np.testing.assert_array_equal(load_zarr(uri)[:], np.arange(100, dtype="i4"))


def test_store_zarr_counts_chunks_on_a_bar(monkeypatch, capsys):
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "1")
    a = np.arange(100 * 100, dtype="f4").reshape(100, 100)
    a[:50] = 0  # the chunks of fill values are not written, yet the bar ends full
    uri = store_zarr(a, chunks=(10, 100), progress=True)
    err = capsys.readouterr().err
    assert "store_zarr" in err and "100.0%" in err and "chunks/s" in err
    np.testing.assert_array_equal(load_zarr(uri)[:], a)
    store_zarr(a + 1, chunks=(10, 100), progress=False)
    assert capsys.readouterr().err == ""
