"""BlobBatch: blobs written now, flushed and named together at commit."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from kachery_tasks.errors import StorageError
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.batch import BlobBatch
from kachery_tasks.storage.local import get_store


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_blobs_are_named_and_indexed_only_at_commit():
    store = current_node().store
    batch = BlobBatch(store)
    datas = [os.urandom(1000 + i) for i in range(5)]
    ids = [batch.add(d) for d in datas]
    assert ids == [_sha(d) for d in datas]
    assert len(batch) == 5
    for sha, d in zip(ids, datas):
        assert not os.path.exists(store.blob_path(sha))  # nothing under a final name yet
        assert not store.has(f"sha256://{sha}")
        with open(batch.path(sha), "rb") as f:  # but readable from where it waits
            assert f.read() == d
    batch.commit()
    assert len(batch) == 0
    for sha, d in zip(ids, datas):
        assert batch.path(sha) is None
        with open(store.load_file(f"sha256://{sha}"), "rb") as f:
            assert f.read() == d
        assert os.stat(store.blob_path(sha)).st_mode & 0o222 == 0  # read-only
        assert store.info(f"sha256://{sha}").size == len(d)
    assert not [n for n in os.listdir(store.incoming)]


def test_same_content_is_written_once_and_known_content_not_at_all():
    store = current_node().store
    known = store.store_bytes(b"already here")
    batch = BlobBatch(store)
    a = batch.add(b"twice")
    assert batch.add(b"twice") == a
    assert batch.add(b"already here") == _sha(b"already here")
    assert batch.path(_sha(b"already here")) is None  # not rewritten
    assert len(os.listdir(store.incoming)) == 1
    batch.commit()
    assert store.has(known) and store.has(f"sha256://{a}")


def test_discard_leaves_nothing():
    store = current_node().store
    batch = BlobBatch(store)
    sha = batch.add(b"never kept")
    batch.discard()
    assert os.listdir(store.incoming) == []
    assert not os.path.exists(store.blob_path(sha))
    assert not store.has(f"sha256://{sha}")


def test_a_crash_before_commit_leaves_no_blob_and_no_row(node_path):
    code = textwrap.dedent(
        """
        import os
        from kachery_tasks.storage.batch import BlobBatch
        from kachery_tasks.nodes import current_node
        b = BlobBatch(current_node().store)
        b.add(b"lost in the crash")
        os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy())
    assert proc.returncode == 9
    store = current_node().store
    sha = _sha(b"lost in the crash")
    assert not os.path.exists(store.blob_path(sha))
    assert not store.has(f"sha256://{sha}")
    assert len(os.listdir(store.incoming)) == 1  # a temp file for gc to reclaim
    # the same content stored again afterwards is whole
    again = BlobBatch(store)
    again.add(b"lost in the crash")
    again.commit()
    with open(store.load_file(f"sha256://{sha}"), "rb") as f:
        assert f.read() == b"lost in the crash"


def test_a_pickled_batch_reads_pending_blobs_and_commits_them():
    store = current_node().store
    batch = BlobBatch(store)
    sha = batch.add(b"travels")
    copy = pickle.loads(pickle.dumps(batch))
    with open(copy.path(sha), "rb") as f:
        assert f.read() == b"travels"
    copy.commit()
    assert store.has(f"sha256://{sha}")


def test_a_full_disk_is_a_storage_error_and_leaves_nothing(monkeypatch):
    import errno

    from kachery_tasks.storage import batch as batch_mod

    def full(tmp, data, mode=0o600, sync=True):
        with open(tmp, "wb") as f:
            f.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch_mod, "write_temp", full)
    store = current_node().store
    batch = BlobBatch(store)
    with pytest.raises(StorageError, match="space"):
        batch.add(b"nowhere to go, not even half of it")
    assert len(batch) == 0
    assert os.listdir(store.incoming) == []


def test_known_content_is_touched_and_a_blob_evicted_meanwhile_is_not_recorded():
    store = current_node().store
    old = store.store_bytes(b"old and unused")
    store.index.touch(_sha(b"old and unused"), 0.0)  # least recently used
    newer = store.store_bytes(b"newer")
    store.index.touch(_sha(b"newer"), 1.0)
    store._touched.clear()  # as in a later process: neither was used by this one
    batch = BlobBatch(store)
    batch.add(b"old and unused")  # found in the store: now the most recently used
    store.gc(max_size=len(b"old and unused"))  # room for one: the other goes
    assert store.has(old) and not store.has(newer)

    batch.add(b"newer and pending")
    store.gc(max_size=0, grace=0)  # a while later: evicts the blob the batch counted on
    assert not store.has(old)
    with pytest.raises(StorageError, match="removed from the store"):
        batch.commit()
    assert not store.has(old)  # no row pointing at nothing
    assert store.index.get(_sha(b"old and unused")) is None
    assert not store.has(f"sha256://{_sha(b'newer and pending')}")
    assert os.listdir(store.incoming) == []


def test_a_value_over_the_chunk_size_gets_a_manifest(node_path):
    from kachery_tasks.config import init_node_dir

    node_path.mkdir(parents=True, exist_ok=True)
    (node_path / "config.toml").write_text('[store]\nchunk_size = "64KiB"\n')
    store = get_store(init_node_dir(node_path))
    batch = BlobBatch(store)
    big = os.urandom(200 * 1024)
    sha = batch.add(big)
    small = batch.add(b"small")
    batch.commit()
    info = store.info(f"sha256://{sha}")
    assert info.chunks == 4 and info.sha1 == hashlib.sha1(big).hexdigest()
    assert store.manifest(f"sha256://{sha}").chunk_size == 64 * 1024
    assert store.info(f"sha256://{small}").chunks == 0
