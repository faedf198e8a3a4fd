"""One pass over content computes everything the store needs to know about it.

A digest holds the SHA-256 of the whole content (its id), the SHA-1 (the
alias kachery and kachery-cloud users hold) and, when the content is larger
than the chunk size, the SHA-256 of every transfer chunk.

Large content is digested on two threads that each walk it once, in order:
one computes the whole SHA-256 and the even chunks' hashes, the other the
SHA-1 and the odd chunks' hashes. hashlib releases the GIL, so the work
splits about evenly across two cores and each piece is hashed while it is in
cache.

Storing a large file (:func:`copy_and_digest`) lets the kernel copy it into
the store's temporary file (``copy_file_range``: the bytes never pass through
Python) a step at a time on one thread, while the two digest threads follow
it through a memory map of the *copy*, each step right after it landed; the
copy is flushed while the digest finishes. What is hashed is exactly what is
stored, and the source is read once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import SourceFileError
from ..fsutil import write_all

BUFFER_SIZE = 4 * 2**20
_PIECE = 256 * 2**10
_SMALL = 2 * 2**20
_COPY_STEP = 64 * 2**20
_PIPE_STEP = 8 * 2**20  # a copy step the digest threads wait for (pipelined copies)
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}

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
    chunk_size: int = 0  # the size of every chunk but the last (0: not chunked)


def digest_bytes(
    data: bytes | bytearray | memoryview,
    chunk_size: int,
    progress: ProgressFn | None = None,
    ready: Callable[[int], None] | None = None,
) -> Digest:
    """Digest content held in memory (or mapped).

    ``ready(end)``, when given, is called before the bytes up to offset ``end``
    are read and returns once they are there (content still being written).
    """
    view = memoryview(data).cast("B")
    size = len(view)
    chunked = size > chunk_size
    bounds = [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]
    chunk_hex: dict[int, str] = {}
    out: dict[str, str] = {}

    def walk(name: str, parity: int, report: bool) -> None:
        # Sub-pieces small enough to stay in cache feed both hashes of this thread.
        h = hashlib.new(name)
        for i, (off, n) in enumerate(bounds or [(0, 0)]):
            mine = chunked and i % 2 == parity
            ch = hashlib.sha256() if mine else None
            for sub in range(off, off + n, _PIECE):
                stop = min(sub + _PIECE, off + n)
                if ready is not None:
                    piece = None  # hold no view of content that may never come
                    ready(stop)
                piece = view[sub:stop]
                h.update(piece)
                if ch is not None:
                    ch.update(piece)
                if report and progress:
                    progress(len(piece))
            if ch is not None:
                chunk_hex[i] = ch.hexdigest()
        out[name] = h.hexdigest()

    if size <= _SMALL:
        walk("sha1", 1, False)
        walk("sha256", 0, True)
    else:
        failure: list[BaseException] = []

        def helper_walk() -> None:
            try:
                walk("sha1", 1, False)
            except BaseException as e:  # re-raised in the calling thread
                failure.append(e)

        helper = threading.Thread(target=helper_walk, name="kachery-hash")
        helper.start()
        try:
            walk("sha256", 0, True)
        finally:
            helper.join()
        if failure:
            raise failure[0]
    chunks = [Chunk(off, n, chunk_hex[i]) for i, (off, n) in enumerate(bounds)] if chunked else []
    return Digest(out["sha256"], out["sha1"], size, chunks, chunk_size if chunked else 0)


@contextlib.contextmanager
def mapped(fd: int, populate: bool = True) -> Iterator[memoryview]:
    """The whole of file ``fd`` as a read-only memoryview (empty files included).

    ``populate=False`` for a file still being written (its pages are read as
    they are filled, not all up front).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        yield memoryview(b"")
        return
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    m = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    view = memoryview(m)
    try:
        yield view
    finally:
        try:
            view.release()
            m.close()
        except BufferError:
            pass  # a slice is still referenced (by a traceback): unmapped when it goes


def read_all(fd: int) -> bytes:
    """Read ``fd`` from its offset to its end."""
    parts = []
    while piece := os.read(fd, BUFFER_SIZE):
        parts.append(piece)
    return b"".join(parts)


def digest_open_file(fd: int, chunk_size: int, progress: ProgressFn | None = None) -> Digest:
    """Digest an open regular file in place: read whole when small, mapped when large."""
    if os.fstat(fd).st_size <= _SMALL:
        return digest_bytes(read_all(fd), chunk_size, progress)
    with mapped(fd) as view:
        return digest_bytes(view, chunk_size, progress)


def hash_file(
    path: str | os.PathLike[str], chunk_size: int, progress: ProgressFn | None = None
) -> Digest:
    """Digest the file at ``path`` in place (no copy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_open_file(fd, chunk_size, progress)
    finally:
        os.close(fd)


def copy_fd(src: int, dst: int, progress: ProgressFn | None = None) -> int:
    """Copy ``src`` from its offset to its end into ``dst``; return the byte count.

    The kernel copies (``copy_file_range``, else ``sendfile``); a read/write
    loop through Python is the last resort.
    """
    total = 0
    for mover in ("copy_file_range", "sendfile", "readwrite"):
        try:
            while True:
                if mover == "copy_file_range":
                    n = os.copy_file_range(src, dst, _COPY_STEP)
                elif mover == "sendfile":
                    n = os.sendfile(dst, src, None, _COPY_STEP)
                else:
                    piece = os.read(src, BUFFER_SIZE)
                    n = len(piece)
                    write_all(dst, piece)
                if n == 0:
                    return total
                total += n
                if progress:
                    progress(n)
        except OSError as e:
            if mover == "readwrite" or total or e.errno not in _NO_KERNEL_COPY:
                raise
    return total


def copy_and_digest(
    src: int, dst: int, chunk_size: int, progress: ProgressFn | None = None
) -> Digest:
    """Copy ``src`` into ``dst`` (opened read-write, empty), digest the copy, fsync it.

    The kernel copies a step at a time on one thread while two others digest
    the steps already copied (so each piece is hashed right after it landed,
    and copying, hashing and flushing overlap); where the kernel cannot copy
    between these files, the copy is made first and then digested. What is
    hashed is the copy, exactly what is stored. ``progress`` receives half of
    each copied piece and half of each hashed piece, so a bar over the file's
    size fills once. SourceFileError if ``src`` ends early (it shrank).
    """
    half = (lambda n: progress(n // 2)) if progress else None
    size = os.fstat(src).st_size
    if size <= _SMALL:
        data = read_all(src)
        write_all(dst, data)
        digest = digest_bytes(data, chunk_size, progress)
        os.fsync(dst)
        return digest
    start = os.lseek(src, 0, os.SEEK_CUR)
    try:
        first = os.copy_file_range(src, dst, min(_PIPE_STEP, size - start), start, 0)
    except OSError as e:
        if e.errno not in _NO_KERNEL_COPY:
            raise
        return _copy_then_digest(src, dst, chunk_size, half)
    size -= start
    os.ftruncate(dst, size)
    copier = _Copier(src, dst, start, size, first, half)
    copier.start()
    try:
        with mapped(dst, populate=False) as view:
            digest = digest_bytes(view, chunk_size, half, ready=copier.wait_for)
    finally:
        copier.stop_and_join()
    copier.raise_failure()
    return digest


def _copy_then_digest(src: int, dst: int, chunk_size: int, half: ProgressFn | None) -> Digest:
    """Copy first (sendfile or read/write), then digest the copy while it is flushed."""
    copy_fd(src, dst, half)
    flushed: list[BaseException | None] = []

    def flush() -> None:
        try:
            os.fsync(dst)
            flushed.append(None)
        except BaseException as e:  # re-raised in the calling thread
            flushed.append(e)

    flusher = threading.Thread(target=flush, name="kachery-fsync")
    flusher.start()
    try:
        with mapped(dst) as view:
            digest = digest_bytes(view, chunk_size, half)
    finally:
        flusher.join()
    if flushed and flushed[0] is not None:
        raise flushed[0]
    return digest


class _Copier(threading.Thread):
    """Copies a file into a pre-sized one a step at a time, then flushes it.

    Digest threads call :meth:`wait_for` before reading the copy; they are
    woken as each step lands, and get the copier's error if it fails.
    """

    def __init__(
        self, src: int, dst: int, start: int, size: int, first: int, progress: ProgressFn | None
    ) -> None:
        super().__init__(name="kachery-copy", daemon=True)
        self.src, self.dst, self.start_at, self.size = src, dst, start, size
        self.copied = first
        self.progress = progress
        self.error: BaseException | None = None
        self.stopping = False
        self.cond = threading.Condition()
        if progress and first:
            progress(first)

    def run(self) -> None:
        try:
            while self.copied < self.size:
                if self.stopping:
                    return
                want = min(_PIPE_STEP, self.size - self.copied)
                n = os.copy_file_range(
                    self.src, self.dst, want, self.start_at + self.copied, self.copied
                )
                if n == 0:
                    raise SourceFileError(
                        "the file became shorter while it was being stored; nothing was "
                        "stored, store it again once it is complete"
                    )
                with self.cond:
                    self.copied += n
                    self.cond.notify_all()
                if self.progress:
                    self.progress(n)
            os.fsync(self.dst)
        except BaseException as e:  # handed to the digest threads and the caller
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def wait_for(self, end: int) -> None:
        if self.copied >= end:
            return
        with self.cond:
            while self.copied < end and self.error is None:
                self.cond.wait()
            if self.copied < end:
                raise self.error or RuntimeError("copy stopped")

    def stop_and_join(self) -> None:
        self.stopping = True
        self.join()

    def raise_failure(self) -> None:
        if self.error is not None:
            raise self.error
