import errno
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from kachery_tasks.errors import (
    ContentNotFoundError,
    CorruptContentError,
    InvalidValueError,
    LinkedFileError,
    SourceFileError,
    StorageFullError,
)
from kachery_tasks.nodes import current_node
from kachery_tasks.storage import hashing
from kachery_tasks.storage.local import get_store
from kachery_tasks.uris import parse_uri


@pytest.fixture
def store(node_path):
    node_path.mkdir()
    (node_path / "config.toml").write_text('[store]\nchunk_size = "4KiB"\n')
    return get_store(current_node().dir)


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


def test_load_with_verify_hashes_only_the_sha256(store, tmp_path, monkeypatch):
    # Checking a blob or a linked original against its id needs its SHA-256 alone:
    # no SHA-1 alias and no chunk hashes (a large file would be read three times).
    data = os.urandom(3 * 4096 + 5)
    stored = store.store_bytes(data)
    linked = store.link_file(_file(tmp_path, "linked.dat", data[::-1]))
    store.info(stored), store.info(linked)  # aliases and manifests made beforehand
    walks = []
    real = hashing.digest_bytes

    def spy(*args, **kwargs):
        digest = real(*args, **kwargs)
        walks.append((digest.sha1, digest.chunks))
        return digest

    monkeypatch.setattr(hashing, "digest_bytes", spy)
    store.load_file(stored, verify=True)
    store.load_file(linked, verify=True)
    assert walks == [(None, []), (None, [])]


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
    report = store.gc(max_size=0, grace=0)  # as if stored long ago
    assert not store.has(uri) and not store.has(manifest_uri)
    assert report.temp_removed == 1 and not stale.exists() and busy.exists()


def _age(store):
    """As if everything in the store was last used long ago."""
    for row in list(store.index.rows()):
        store.index.touch(row.sha256, 1000.0)
    store._touched.clear()


def test_gc_during_a_store_of_content_already_here_keeps_it(store, tmp_path, monkeypatch):
    """The store finds the blob present; gc runs before the store returns its URI."""
    src = _file(tmp_path, "f", os.urandom(10_000))
    first = store.store_file(src)
    _age(store)
    real_record = store.index.record_blob
    ran = []

    def record_after_gc(*args, **kwargs):
        if not ran:
            ran.append(threading.Thread(target=store.gc, args=(0,)))
            ran[0].start()
            ran[0].join()
        return real_record(*args, **kwargs)

    monkeypatch.setattr(store.index, "record_blob", record_after_gc)
    uri = store.store_file(src)
    monkeypatch.undo()
    assert ran and uri == first
    with open(store.load_file(uri), "rb") as f:
        assert f.read() == src.read_bytes()


def test_a_store_that_finds_gc_removing_the_blob_waits_and_writes_it(store, tmp_path, monkeypatch):
    """gc has decided to evict the blob and is removing it when a store finds it present."""
    src = _file(tmp_path, "f", os.urandom(3000))
    store.store_file(src)
    _age(store)
    removing, go = threading.Event(), threading.Event()
    real_drop = store.index.drop_blob

    def drop(sha256):  # gc, past its decision, about to delete the file
        removing.set()
        go.wait(30)
        real_drop(sha256)

    monkeypatch.setattr(store.index, "drop_blob", drop)
    gc = threading.Thread(target=store.gc, args=(0,))
    gc.start()
    assert removing.wait(30)
    result = {}
    storer = threading.Thread(target=lambda: result.update(uri=store.store_file(src)))
    storer.start()
    storer.join(0.5)  # the window: a store that does not wait for gc returns here
    go.set()
    gc.join()
    storer.join()
    monkeypatch.undo()
    with open(store.load_file(result["uri"]), "rb") as f:
        assert f.read() == src.read_bytes()


def test_verify_while_gc_evicts_does_not_crash(store, monkeypatch):
    from kachery_tasks.storage import local

    uris = [store.store_bytes(os.urandom(100 + i)) for i in range(5)]
    _age(store)
    real_hash = local.hash_file
    ran = []

    def hash_during_gc(path, *args, **kwargs):
        if not ran:  # gc runs (on its own thread) just as verify starts hashing
            ran.append(threading.Thread(target=store.gc, args=(0,)))
            ran[0].start()
            ran[0].join()
        return real_hash(path, *args, **kwargs)

    monkeypatch.setattr(local, "hash_file", hash_during_gc)
    report = store.verify(progress=False)
    assert report.vanished == 5 and report.checked == 0
    assert report.corrupt == [] and report.dangling_rows == 0 and report.adopted == 0
    assert not any(store.has(u) for u in uris) and list(store.index.rows()) == []


def _hold_lock_in_another_process(path):
    script = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_gc_removes_abandoned_partial_downloads_and_keeps_live_ones(store):
    two_days_ago = time.time() - 2 * 86400
    abandoned, live, recent = ("a" * 64, "b" * 64, "c" * 64)
    for h in (abandoned, live, recent):
        (store.incoming / f"partial-{h}").write_bytes(os.urandom(50_000))
        (store.incoming / f"partial-{h}.done").write_text("{}\n0\n")
        if h != recent:
            for suffix in ("", ".done"):
                os.utime(store.incoming / f"partial-{h}{suffix}", (two_days_ago, two_days_ago))
    writer = _hold_lock_in_another_process(store.incoming / f"partial-{live}.lock")
    try:
        report = store.gc(max_size=0)
        assert report.partials_removed == 1 and report.partial_bytes >= 50_000
        names = set(os.listdir(store.incoming))
        assert not any(n.startswith(f"partial-{abandoned}") for n in names)
        assert {f"partial-{live}", f"partial-{recent}", f"partial-{recent}.done"} <= names
    finally:
        writer.communicate("")  # its process ends: the lock goes with it
    assert store.gc().partials_removed == 1  # now the live one is abandoned too
    assert sorted(os.listdir(store.incoming)) == [f"partial-{recent}", f"partial-{recent}.done"]


def test_gc_without_a_size_only_cleans_up(store, tmp_path):
    uri = store.store_file(_file(tmp_path, "big", os.urandom(9000)))
    _age(store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = store.incoming / f".tmp-{dead}-abc"
    stale.write_bytes(b"left by a crash")
    partial = store.incoming / f"partial-{'d' * 64}"
    partial.write_bytes(b"abandoned")
    for p in (stale, partial):
        os.utime(p, (0, 0))
    report = store.gc()
    assert report.evicted == 0 and store.has(uri)
    assert report.temp_removed == 1 and report.partials_removed == 1
    assert os.listdir(store.incoming) == []


def test_gc_keeps_content_used_in_the_last_minute(store):
    old = store.store_bytes(b"old")
    _age(store)
    new = store.store_bytes(b"new")
    report = store.gc(max_size=0)
    assert not store.has(old) and store.has(new) and report.kept_recent == 1


def _in_thread(fn, *args):
    """fn(*args) on a daemon thread; what it returned or raised, or 'hung'."""
    out = []

    def run():
        try:
            out.append(fn(*args))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    return out[0] if out else "hung"


@pytest.mark.parametrize("what", ["store_file", "link_file"])
def test_a_named_pipe_is_refused_without_blocking(store, tmp_path, what):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome = _in_thread(getattr(store, what), fifo)
    if outcome == "hung":
        with open(fifo, "wb"):  # let the stuck open go (the test has failed already)
            pass
    assert isinstance(outcome, SourceFileError), outcome
    assert "named pipe" in str(outcome) and str(fifo) in str(outcome)
    assert os.listdir(store.incoming) == []


def test_a_path_swapped_for_a_pipe_after_the_check_is_refused(store, tmp_path, monkeypatch):
    from kachery_tasks.storage import local

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    regular = os.stat(_file(tmp_path, "f", b"x"))
    monkeypatch.setattr(local.os, "stat", lambda path, *a, **k: regular)  # the check saw a file
    outcome = _in_thread(store.store_file, fifo)
    monkeypatch.undo()
    if outcome == "hung":
        with open(fifo, "wb"):
            pass
    assert isinstance(outcome, SourceFileError) and "named pipe" in str(outcome), outcome


def test_a_linked_original_edited_in_place_with_its_mtime_restored_is_not_served(store, tmp_path):
    data = os.urandom(10_000)
    original = _file(tmp_path, "orig.bin", data)
    uri = store.link_file(original)
    st = os.stat(original)
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(original, "r+b") as f:  # same size, same inode, other bytes
        f.seek(5000)
        f.write(bytes([data[5000] ^ 0xFF]))
    os.utime(original, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(original)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns,
                                                                 st.st_ino)
    with pytest.raises(LinkedFileError, match="changed"):
        store.load_file(uri)


def test_an_index_from_before_link_ctimes_is_upgraded(store, tmp_path):
    import sqlite3

    from kachery_tasks.config import NodeDir
    from kachery_tasks.storage.local import LocalStore

    original = _file(tmp_path, "orig.bin", os.urandom(5000))
    uri = store.link_file(original)
    sha256 = parse_uri(uri).hex
    store.close()
    db = sqlite3.connect(store.root / "index.db")
    db.execute("ALTER TABLE blobs DROP COLUMN link_ctime_ns")  # as an older version wrote it
    db.commit()
    db.close()
    again = LocalStore(NodeDir(store.node.path))
    try:
        assert again.index.get(sha256).link_ctime_ns is None
        assert again.load_file(uri) == str(original)  # served: nothing known changed
        again.link_file(original)
        assert again.index.get(sha256).link_ctime_ns == os.stat(original).st_ctime_ns
    finally:
        again.close()


def test_pin_of_absent_content_raises(store):
    with pytest.raises(ContentNotFoundError):
        store.pin("sha256://" + "1" * 64)


def test_file_names_and_labels_that_are_not_utf8(store, tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9.dat")
    path.write_bytes(b"x" * 10)
    uri = store.store_file(path)
    assert parse_uri(uri).label == "caf\ufffd.dat"
    assert store.info(uri).label == "caf\ufffd.dat"
    with pytest.raises(SourceFileError, match="name is not UTF-8"):
        store.link_file(path)
    for call in (lambda: store.store_file(path, label="\udce9"),
                 lambda: store.store_bytes(b"y", label="a\udce9")):
        with pytest.raises(InvalidValueError, match="a label must be valid Unicode text"):
            call()


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
    # the manifest's row is not dangling: verify made its blob again before it got to rows
    assert report.manifests_rebuilt == [parse_uri(uri).hex] and report.dangling_rows == 0
    assert os.path.exists(store.blob_path(manifest)) and store.index.get(manifest) is not None
    assert store.index.by_sha1(hashlib.sha1(b"alias to compute").hexdigest()).sha256 == (
        parse_uri(small).hex
    )
