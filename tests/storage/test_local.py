import errno
import hashlib
import os
import stat
import subprocess
import sys
import time

import pytest

from kachery_tasks.config import node_dir
from kachery_tasks.errors import (
    ContentNotFoundError,
    CorruptContentError,
    InvalidValueError,
    LinkedFileError,
    SourceFileError,
    StorageFullError,
)
from kachery_tasks.storage import hashing
from kachery_tasks.storage.local import get_store
from kachery_tasks.uris import parse_uri


@pytest.fixture
def store(node_path):
    node_path.mkdir()
    (node_path / "config.toml").write_text('[store]\nchunk_size = "4KiB"\n')
    return get_store(node_dir())


def _file(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_store_and_load_file(store, tmp_path):
    data = os.urandom(3000)
    uri = store.store_file(_file(tmp_path, "raw.dat", data))
    parsed = parse_uri(uri)
    assert parsed.hex == hashlib.sha256(data).hexdigest()
    assert (parsed.label, parsed.size) == ("raw.dat", 3000)
    path = store.load_file(uri)
    with open(path, "rb") as f:
        assert f.read() == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert str(store.root) in path


def test_same_content_twice_is_one_blob(store, tmp_path):
    a = store.store_file(_file(tmp_path, "a", b"same"))
    b = store.store_file(_file(tmp_path, "b", b"same"), label="other")
    assert parse_uri(a).hex == parse_uri(b).hex
    assert store.index.stored_bytes() == (1, 4)
    assert os.listdir(store.incoming) == []


def test_large_file_gets_a_verified_manifest(store, tmp_path):
    data = os.urandom(4096 * 3 + 100)
    uri = store.store_file(_file(tmp_path, "big", data))
    m = store.manifest(uri)
    assert m is not None and m.size == len(data)
    assert [c.size for c in m.chunks] == [4096, 4096, 4096, 100]
    for c in m.chunks:
        assert c.sha256 == hashlib.sha256(data[c.offset : c.offset + c.size]).hexdigest()
    info = store.info(uri)
    assert info.chunks == 4 and info.manifest_uri is not None
    assert store.manifest(store.store_bytes(b"small")) is None


def test_sha1_uri_resolves_to_stored_content(store, tmp_path):
    data = b"kachery content"
    store.store_file(_file(tmp_path, "k", data))
    sha1 = hashlib.sha1(data).hexdigest()
    with open(store.load_file(f"sha1://{sha1}/k.txt"), "rb") as f:
        assert f.read() == data
    with pytest.raises(ContentNotFoundError, match="import-kachery"):
        store.load_file("sha1://" + "0" * 40)


def test_missing_content_raises_never_none(store):
    with pytest.raises(ContentNotFoundError) as e:
        store.load_file("sha256://" + "0" * 64)
    assert "kachery-tasks store" in str(e.value)
    assert not store.has("sha256://" + "0" * 64)


def test_load_bytes_ranges(store):
    uri = store.store_bytes(b"0123456789")
    assert store.load_bytes(uri, 2, 5) == b"234"
    assert store.load_bytes(uri, 7) == b"789"
    assert store.load_bytes(uri, 8, 100) == b"89"
    for start, end in ((-1, 3), (5, 2), (11, None)):
        with pytest.raises(InvalidValueError):
            store.load_bytes(uri, start, end)


def test_source_errors_are_named(store, tmp_path):
    with pytest.raises(SourceFileError, match="no such file"):
        store.store_file(tmp_path / "nope")
    with pytest.raises(SourceFileError, match="directory"):
        store.store_file(tmp_path)


def test_full_disk_leaves_nothing_behind(store, tmp_path, monkeypatch):
    src = _file(tmp_path, "f", os.urandom(5000))

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hashing.os, "write", no_space)
    with pytest.raises(StorageFullError, match="gc"):
        store.store_file(src)
    monkeypatch.undo()
    assert os.listdir(store.incoming) == []
    assert store.index.stored_bytes() == (0, 0)
    assert parse_uri(store.store_file(src)).size == 5000


def test_link_file_serves_the_original_until_it_changes(store, tmp_path):
    original = _file(tmp_path, "orig.bin", os.urandom(10_000))
    uri = store.link_file(original)
    assert store.load_file(uri) == str(original)
    assert not os.path.exists(store.blob_path(parse_uri(uri).hex))  # nothing copied
    assert store.info(uri).linked_path == str(original)
    assert store.manifest(uri) is not None
    time.sleep(0.01)
    os.utime(original, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(LinkedFileError, match="changed"):
        store.load_file(uri)
    uri = store.link_file(original)
    original.unlink()
    with pytest.raises(LinkedFileError, match="gone"):
        store.load_file(uri)


def _corrupt(path):
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")


def test_load_with_verify_detects_and_removes_corruption(store):
    uri = store.store_bytes(b"precious data")
    _corrupt(store.load_file(uri))
    assert store.load_file(uri)  # without verify the path is served
    with pytest.raises(CorruptContentError, match="removed"):
        store.load_file(uri, verify=True)
    assert not store.has(uri)
    assert store.index.get(parse_uri(uri).hex) is None


def test_verify_removes_corrupt_adopts_orphans_drops_dangling(store):
    good = store.store_bytes(b"good")
    bad = store.store_bytes(b"bad")
    _corrupt(store.load_file(bad))
    orphan = store.store_bytes(b"orphan")
    store.index.drop_blob(parse_uri(orphan).hex)  # as if a crash came before the row
    dangling = parse_uri(store.store_bytes(b"dangling")).hex
    os.unlink(store.blob_path(dangling))
    report = store.verify(progress=False)
    assert report.corrupt == [parse_uri(bad).hex]
    assert report.adopted == 1 and report.dangling_rows == 1
    assert store.index.get(parse_uri(orphan).hex) is not None
    assert store.index.get(dangling) is None
    assert store.has(good) and not store.has(bad)


def test_gc_evicts_least_recently_used_and_keeps_pinned(store, tmp_path):
    uris = [store.store_bytes(bytes([i]) * 1000) for i in range(5)]
    for i, uri in enumerate(uris):
        store.index.touch(parse_uri(uri).hex, 1000.0 + i)
    store.pin(uris[0])
    report = store.gc(max_size=2500)
    assert report.remaining <= 2500 and report.evicted == 3
    assert [store.has(u) for u in uris] == [True, False, False, False, True]
    store.pin(uris[0], False)
    store.gc(max_size=0)
    assert not any(store.has(u) for u in uris)


def test_gc_takes_a_manifest_with_its_file_and_cleans_stale_temp(store, tmp_path):
    uri = store.store_file(_file(tmp_path, "big", os.urandom(9000)))
    manifest_uri = store.info(uri).manifest_uri
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = store.incoming / f".tmp-{dead}-abc"  # its writer has exited
    stale.write_bytes(b"partial")
    busy = store.incoming / f".tmp-{os.getpid()}-def"  # its writer is still at work
    busy.write_bytes(b"a chunk of an array not sealed yet")
    for p in (stale, busy):
        os.utime(p, (0, 0))
    report = store.gc(max_size=0)
    assert not store.has(uri) and not store.has(manifest_uri)
    assert report.temp_removed == 1 and not stale.exists() and busy.exists()


def test_pin_of_absent_content_raises(store):
    with pytest.raises(ContentNotFoundError):
        store.pin("sha256://" + "1" * 64)


# ---------------------------------------------- what storing leaves for later
def _big(store, tmp_path, name="big", size=4096 * 3 + 100):
    data = os.urandom(size)
    return data, store.store_file(_file(tmp_path, name, data))


def _chunk_hashes(data, chunk_size=4096):
    return [hashlib.sha256(data[o : o + chunk_size]).hexdigest()
            for o in range(0, len(data), chunk_size)]


def test_storing_computes_the_sha256_only_the_rest_when_first_needed(store, tmp_path):
    data, uri = _big(store, tmp_path)
    row = store.index.get(parse_uri(uri).hex)
    assert row.sha1_pending and row.manifest is None  # nothing beyond the id yet
    m = store.manifest(uri)  # what an upload asks for
    assert [c.sha256 for c in m.chunks] == _chunk_hashes(data)
    row = store.index.get(parse_uri(uri).hex)
    assert row.manifest is not None and row.sha1_pending  # the SHA-1 still waits
    info = store.info(uri)
    assert info.sha1 == hashlib.sha1(data).hexdigest() and info.chunks == 4
    assert not store.index.get(parse_uri(uri).hex).sha1_pending
    small = store.store_bytes(b"small bytes")
    assert store.index.get(parse_uri(small).hex).sha1_pending
    assert store.info(small).sha1 == hashlib.sha1(b"small bytes").hexdigest()
    assert store.info(small).chunks == 0 and store.manifest(small) is None


def test_a_sha1_lookup_computes_missing_aliases_once(store, tmp_path, monkeypatch):
    from kachery_tasks.storage.batch import BlobBatch

    batch = BlobBatch(store)
    chunk = batch.add(b"a zarr chunk: no sha1:// alias")
    batch.commit()
    uris = [store.store_bytes(b"first"), store.store_bytes(b"second")]
    hashed = []
    real = hashing.hash_file
    monkeypatch.setattr(
        "kachery_tasks.storage.local.hash_file",
        lambda path, *a, **kw: hashed.append(os.path.basename(path)) or real(path, *a, **kw),
    )
    sha1 = hashlib.sha1(b"second").hexdigest()
    assert store.resolve(f"sha1://{sha1}") == parse_uri(uris[1]).hex
    assert sorted(hashed) == sorted(parse_uri(u).hex for u in uris)  # not the zarr chunk
    assert chunk not in hashed
    hashed.clear()
    assert store.resolve(f"sha1://{sha1}") == parse_uri(uris[1]).hex  # from the index now
    assert store.index.by_sha1(hashlib.sha1(b"first").hexdigest()) is not None
    with pytest.raises(ContentNotFoundError, match="SHA-1"):
        store.resolve("sha1://" + "0" * 40)
    assert hashed == []  # every alias is known: a miss costs nothing more


def test_a_sha1_search_records_nothing_about_damaged_content(store):
    uri = store.store_bytes(b"will rot before its alias is computed")
    _corrupt(store.load_file(uri))
    sha1 = hashlib.sha1(b"will rot before its alias is computed").hexdigest()
    with pytest.raises(ContentNotFoundError):
        store.resolve(f"sha1://{sha1}")
    assert store.index.get(parse_uri(uri).hex) is None and not store.has(uri)  # removed
    assert store.index.by_sha1(sha1) is None  # nothing false recorded


def test_a_manifest_is_not_made_from_damaged_bytes(store, tmp_path):
    _, uri = _big(store, tmp_path)
    _corrupt(store.load_file(uri))
    with pytest.raises(CorruptContentError, match="removed"):
        store.manifest(uri)
    assert not store.has(uri) and store.index.get(parse_uri(uri).hex) is None
    assert store.index.stored_bytes() == (0, 0)  # no manifest of the damaged bytes either


def test_a_lost_or_damaged_manifest_is_made_again_when_needed(store, tmp_path):
    data, uri = _big(store, tmp_path)
    first = store.info(uri).manifest_uri
    os.unlink(store.load_file(first))  # gone (deleted by hand)
    assert [c.sha256 for c in store.manifest(uri).chunks] == _chunk_hashes(data)
    _corrupt(store.load_file(store.info(uri).manifest_uri))  # damaged
    info = store.info(uri)
    assert info.chunks == 4 and info.manifest_uri == first  # the same manifest, made again
    assert [c.sha256 for c in store.manifest(uri).chunks] == _chunk_hashes(data)


def test_verify_makes_a_damaged_manifest_again(store, tmp_path):
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.sync import upload

    data, uri = _big(store, tmp_path)
    manifest = parse_uri(store.info(uri).manifest_uri).hex
    _corrupt(store.blob_path(manifest))
    report = store.verify(progress=False)
    assert report.corrupt == [manifest]
    assert report.manifests_rebuilt == [parse_uri(uri).hex]
    assert [c.sha256 for c in store.manifest(uri).chunks] == _chunk_hashes(data)
    assert store.index.get(parse_uri(uri).hex).manifest == manifest  # the same bytes again
    assert upload(store, open_bucket(f"file://{tmp_path}/bucket"), uri).objects_written == 5
    again = store.verify(progress=False)
    assert (again.corrupt, again.manifests_rebuilt, again.dangling_rows) == ([], [], 0)


def test_verify_makes_a_missing_manifest_again_and_fills_in_aliases(store, tmp_path):
    _, uri = _big(store, tmp_path)
    manifest = parse_uri(store.info(uri).manifest_uri).hex
    os.unlink(store.blob_path(manifest))
    small = store.store_bytes(b"alias to compute")
    report = store.verify(progress=False)
    assert report.manifests_rebuilt == [parse_uri(uri).hex] and report.dangling_rows == 1
    assert os.path.exists(store.blob_path(manifest))
    assert store.index.by_sha1(hashlib.sha1(b"alias to compute").hexdigest()).sha256 == (
        parse_uri(small).hex
    )
