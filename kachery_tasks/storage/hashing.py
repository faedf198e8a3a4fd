"""One read of a file computes everything the store needs to know about it.

A single pass over the source yields the SHA-256 of the whole content (its
id), the SHA-1 (the alias kachery and kachery-cloud users hold), the SHA-256
of every transfer chunk when the file is larger than the chunk size, and,
optionally, a copy written to an open destination file.

The reading thread reads into a small pool of buffers and writes each buffer
to the destination while a hashing thread digests it; hashlib releases the GIL
on large updates, so copying and hashing proceed on two cores at once. A
buffer returns to the pool only when the hasher is done with it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

BUFFER_SIZE = 4 * 2**20
_POOL = 4
_SMALL = 2 * 2**20

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Chunk:
    """One transfer chunk of a file: where it starts, how long it is, its SHA-256."""

    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Digest:
    """What one pass over some content learned."""

    sha256: str
    sha1: str
    size: int
    chunks: list[Chunk] = field(default_factory=list)


class _Hasher:
    """Digests a byte stream piece by piece, cutting chunk hashes at chunk boundaries."""

    def __init__(self, chunk_size: int, want_chunks: bool) -> None:
        self.whole = hashlib.sha256()
        self.sha1 = hashlib.sha1()
        self.chunk_size = chunk_size
        self.want_chunks = want_chunks
        self.chunk = hashlib.sha256()
        self.chunk_offset = 0
        self.chunk_fill = 0
        self.size = 0
        self.chunks: list[Chunk] = []

    def update(self, view: memoryview) -> None:
        self.whole.update(view)
        self.sha1.update(view)
        self.size += len(view)
        if not self.want_chunks:
            return
        while view:
            take = min(len(view), self.chunk_size - self.chunk_fill)
            self.chunk.update(view[:take])
            self.chunk_fill += take
            view = view[take:]
            if self.chunk_fill == self.chunk_size:
                self._close_chunk()

    def _close_chunk(self) -> None:
        self.chunks.append(Chunk(self.chunk_offset, self.chunk_fill, self.chunk.hexdigest()))
        self.chunk_offset += self.chunk_fill
        self.chunk_fill = 0
        self.chunk = hashlib.sha256()

    def digest(self) -> Digest:
        if self.want_chunks and self.chunk_fill:
            self._close_chunk()
        chunks = self.chunks if self.size > self.chunk_size else []
        return Digest(self.whole.hexdigest(), self.sha1.hexdigest(), self.size, chunks)


def digest_bytes(data: bytes | memoryview, chunk_size: int) -> Digest:
    """Digest content that is already in memory."""
    h = _Hasher(chunk_size, want_chunks=len(data) > chunk_size)
    h.update(memoryview(data))
    return h.digest()


def digest_fd(
    src: int,
    chunk_size: int,
    dst: int | None = None,
    progress: ProgressFn | None = None,
    size_hint: int = -1,
) -> Digest:
    """Read ``src`` to its end once, digesting it and copying it to ``dst`` if given.

    ``progress`` is called with the number of bytes just processed.
    """
    hasher = _Hasher(chunk_size, want_chunks=size_hint < 0 or size_hint > chunk_size)
    if 0 <= size_hint <= _SMALL:
        parts = []
        while piece := os.read(src, _SMALL + 1):
            parts.append(piece)
        data = memoryview(b"".join(parts))
        hasher.update(data)
        if dst is not None:
            _write_all(dst, data)
        if progress:
            progress(len(data))
        return hasher.digest()
    return _digest_stream(src, hasher, dst, progress)


def _digest_stream(
    src: int, hasher: _Hasher, dst: int | None, progress: ProgressFn | None
) -> Digest:
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(_POOL):
        free.put(bytearray(BUFFER_SIZE))
    work: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    failure: list[BaseException] = []

    def hash_loop() -> None:
        try:
            while (item := work.get()) is not None:
                buf, n = item
                hasher.update(memoryview(buf)[:n])
                free.put(buf)
        except BaseException as e:  # surfaced in the reading thread
            failure.append(e)
            free.put(bytearray(BUFFER_SIZE))

    thread = threading.Thread(target=hash_loop, name="kachery-hash", daemon=True)
    thread.start()
    try:
        while not failure:
            buf = free.get()
            n = _readinto(src, buf)
            if n == 0:
                free.put(buf)
                break
            work.put((buf, n))
            if dst is not None:
                _write_all(dst, memoryview(buf)[:n])
            if progress:
                progress(n)
    finally:
        work.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return hasher.digest()


def _readinto(fd: int, buf: bytearray) -> int:
    """Fill ``buf`` as far as the file allows; return the byte count (0 at end)."""
    view = memoryview(buf)
    total = 0
    while total < len(buf):
        n = os.readv(fd, [view[total:]])
        if n == 0:
            break
        total += n
    return total


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def hash_file(path: str | os.PathLike[str], chunk_size: int) -> Digest:
    """Digest the file at ``path`` without copying it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_fd(fd, chunk_size, size_hint=os.fstat(fd).st_size)
    finally:
        os.close(fd)
