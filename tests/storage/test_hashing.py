import errno
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.storage import hashing
from kachery_tasks.storage.hashing import copy_and_hash, digest_bytes, hash_file


def _expected(data: bytes, chunk_size: int):
    chunks = []
    if len(data) > chunk_size:
        for off in range(0, len(data), chunk_size):
            piece = data[off : off + chunk_size]
            chunks.append((off, len(piece), hashlib.sha256(piece).hexdigest()))
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), chunks


@settings(max_examples=80, deadline=None)
@given(
    st.binary(max_size=5000), st.integers(min_value=1, max_value=1500), st.booleans(),
    st.booleans(), st.booleans(),
)
def test_digest_bytes_matches_hashlib(data, chunk_size, threaded, sha1, chunks):
    hashing._SMALL = 0 if threaded else 2 * 2**20
    try:
        d = digest_bytes(data, chunk_size, sha1=sha1, chunks=chunks)
    finally:
        hashing._SMALL = 2 * 2**20
    want_sha256, want_sha1, want_chunks = _expected(data, chunk_size)
    assert (d.sha256, d.sha1, d.size) == (want_sha256, want_sha1 if sha1 else None, len(data))
    assert [(c.offset, c.size, c.sha256) for c in d.chunks] == (want_chunks if chunks else [])
    assert d.chunk_size == (chunk_size if chunks and want_chunks else 0)


@pytest.mark.parametrize(("kernel_copy", "sha1"), [(True, False), (True, True), (False, False)])
def test_copy_and_hash_of_a_large_file(tmp_path, monkeypatch, kernel_copy, sha1):
    # Small thresholds force the mapped path and many copy steps (pipelined with
    # the kernel copy; sequential without it).
    monkeypatch.setattr(hashing, "_SMALL", 10)
    monkeypatch.setattr(hashing, "_COPY_STEP", 1000)
    monkeypatch.setattr(hashing, "_PIPE_STEP", 1000)
    if not kernel_copy:
        def unsupported(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(hashing.os, "copy_file_range", unsupported)
        monkeypatch.setattr(hashing.os, "sendfile", unsupported)
    data = os.urandom(12_345)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen = []
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    with open(src, "rb") as fin:
        d = copy_and_hash(fin.fileno(), fd, progress=seen.append, sha1=sha1)
    os.close(fd)
    assert (tmp_path / "dst").read_bytes() == data
    want_sha256, want_sha1, _ = _expected(data, 777)
    assert (d.sha256, d.sha1, d.size) == (want_sha256, want_sha1 if sha1 else None, len(data))
    assert d.chunks == [] and d.chunk_size == 0  # chunk hashes are not computed when storing
    assert abs(sum(seen) - len(data)) <= len(seen)


def test_copy_and_hash_of_a_small_file(tmp_path):
    data = os.urandom(5000)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    with open(src, "rb") as fin:
        d = copy_and_hash(fin.fileno(), fd)
    os.close(fd)
    assert (tmp_path / "dst").read_bytes() == data
    assert (d.sha256, d.sha1, d.chunks) == (hashlib.sha256(data).hexdigest(), None, [])


def test_hash_file_of_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    d = hash_file(p, 1024)
    assert d.sha256 == hashlib.sha256(b"").hexdigest() and d.size == 0 and d.chunks == []


def test_pipelined_copy_hashes_each_step_as_it_lands_and_starts_its_write(
    tmp_path, monkeypatch
):
    """Many small copy steps and pieces: the hashing waits for every step, and the
    disk write of each step is started as soon as it is copied."""
    monkeypatch.setattr(hashing, "_SMALL", 10)
    monkeypatch.setattr(hashing, "_PIPE_STEP", 1000)
    monkeypatch.setattr(hashing, "_PIECE", 300)
    real = hashing.os.copy_file_range
    steps = []
    started = []

    def slow_copy(*args):
        import time

        time.sleep(0.001)  # the hashing catches up and must wait
        n = real(*args)
        steps.append(n)
        return n

    monkeypatch.setattr(hashing.os, "copy_file_range", slow_copy)
    monkeypatch.setattr(hashing, "start_writeback", lambda fd, off, n: started.append((off, n)))
    data = os.urandom(23_456)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    seen = []
    with open(src, "rb") as fin:
        d = copy_and_hash(fin.fileno(), fd, progress=seen.append)
    os.close(fd)
    assert len(steps) == 24  # 23 full steps and a short one
    assert started == [(off, min(1000, len(data) - off)) for off in range(0, len(data), 1000)]
    assert (tmp_path / "dst").read_bytes() == data
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert abs(sum(seen) - len(data)) <= len(seen)


def test_a_source_that_shrinks_mid_copy_is_refused_not_waited_for(tmp_path, monkeypatch):
    from kachery_tasks.errors import SourceFileError

    monkeypatch.setattr(hashing, "_SMALL", 10)
    monkeypatch.setattr(hashing, "_PIPE_STEP", 1000)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(10_000))
    real = hashing.os.copy_file_range
    calls = {"n": 0}

    def shrinking(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.truncate(src, 2000)
        return real(*args)

    monkeypatch.setattr(hashing.os, "copy_file_range", shrinking)
    fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        with open(src, "rb") as fin, pytest.raises(SourceFileError, match="shorter"):
            copy_and_hash(fin.fileno(), fd)
    finally:
        os.close(fd)
