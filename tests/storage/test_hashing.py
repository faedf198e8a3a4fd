import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.storage import hashing
from kachery_tasks.storage.hashing import digest_bytes, digest_fd, hash_file


def _expected(data: bytes, chunk_size: int):
    chunks = []
    if len(data) > chunk_size:
        for off in range(0, len(data), chunk_size):
            piece = data[off : off + chunk_size]
            chunks.append((off, len(piece), hashlib.sha256(piece).hexdigest()))
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), chunks


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=1500))
def test_digest_bytes_matches_hashlib(data, chunk_size):
    d = digest_bytes(data, chunk_size)
    sha256, sha1, chunks = _expected(data, chunk_size)
    assert (d.sha256, d.sha1, d.size) == (sha256, sha1, len(data))
    assert [(c.offset, c.size, c.sha256) for c in d.chunks] == chunks


def test_streaming_path_copies_and_digests(tmp_path, monkeypatch):
    # Small buffers force the threaded path through many buffer and chunk boundaries.
    monkeypatch.setattr(hashing, "BUFFER_SIZE", 1000)
    monkeypatch.setattr(hashing, "_SMALL", 10)
    data = os.urandom(12_345)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen = []
    with open(src, "rb") as fin, open(tmp_path / "dst", "wb") as fout:
        d = digest_fd(fin.fileno(), 777, fout.fileno(), progress=seen.append, size_hint=-1)
    assert (tmp_path / "dst").read_bytes() == data
    sha256, sha1, chunks = _expected(data, 777)
    assert (d.sha256, d.sha1) == (sha256, sha1)
    assert [(c.offset, c.size, c.sha256) for c in d.chunks] == chunks
    assert sum(seen) == len(data)


def test_hash_file_of_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    d = hash_file(p, 1024)
    assert d.sha256 == hashlib.sha256(b"").hexdigest() and d.size == 0 and d.chunks == []
