"""Hashing content: the SHA-256 that is its id, and the rest when it is wanted.

A digest holds the SHA-256 of the whole content (its id) and, when they were
computed, the SHA-1 (the alias kachery and kachery-cloud users hold) and the
SHA-256 of every transfer chunk of content larger than the chunk size.

Storing a file computes only what the store needs at once: the SHA-256 of a
flushed copy (:func:`copy_and_hash`). The kernel copies the file into the
store's temporary file (``copy_file_range``: the bytes never pass through
Python) a step at a time on one thread, and asks the disk to start writing
each step as soon as it is copied; the calling thread hashes the *copy*
through a memory map right behind it, so what is hashed is exactly what is
stored, the source is read once, and the final fsync finds little left to
write. The SHA-1 alias and the chunk hashes each cost another pass over the
content, so the store computes them when they are first needed.

Several hashes of the same content are shared between two threads that each
walk it once, in order, in pieces small enough to stay in cache (hashlib
releases the GIL, so the work splits across two cores): see :func:`_lanes`.
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
from ..fsutil import start_writeback, write_all

BUFFER_SIZE = 4 * 2**20
_PIECE = 256 * 2**10
_SMALL = 2 * 2**20
_COPY_STEP = 64 * 2**20
_PIPE_STEP = 8 * 2**20  # a copy step the hashing waits for (pipelined copies)
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
    """What hashing some content learned.

    ``sha1`` is None when it was not computed; ``chunks`` is empty when the
    content is not larger than the chunk size or they were not computed.
    """

    sha256: str
    sha1: str | None
    size: int
    chunks: list[Chunk] = field(default_factory=list)
    chunk_size: int = 0  # the size of every chunk but the last (0: no chunks)


@dataclass(frozen=True)
class _Lane:
    """What one walk over the content computes: a whole-content hash (or none) and
    the SHA-256 of every ``step``-th chunk from chunk ``first`` (``step`` 0: none)."""

    whole: str | None
    step: int = 0
    first: int = 0


def _lanes(wholes: list[str], chunked: bool) -> list[_Lane]:
    """Share the work between at most two walks, about evenly.

    Each whole-content hash is one pass over the content and the chunk hashes
    together are one more: with three passes each walk does one and a half
    (the chunks alternate), with two each does one.
    """
    if len(wholes) == 2:
        if chunked:
            return [_Lane(wholes[0], 2, 0), _Lane(wholes[1], 2, 1)]
        return [_Lane(wholes[0]), _Lane(wholes[1])]
    return [_Lane(wholes[0]), _Lane(None, 1, 0)] if chunked else [_Lane(wholes[0])]


def digest_bytes(
    data: bytes | bytearray | memoryview,
    chunk_size: int,
    progress: ProgressFn | None = None,
    ready: Callable[[int], None] | None = None,
    *,
    sha1: bool = True,
    chunks: bool = True,
) -> Digest:
    """Digest content held in memory (or mapped): its SHA-256, and its SHA-1 and
    chunk hashes unless ``sha1`` / ``chunks`` are False.

    Large content is hashed on two threads (see :func:`_lanes`); ``progress``
    receives each piece the calling thread hashed. ``ready(end)``, when given,
    is called before the bytes up to offset ``end`` are read and returns once
    they are there (content still being written).
    """
    view = memoryview(data).cast("B")
    size = len(view)
    chunked = chunks and size > chunk_size
    if chunked:
        bounds = [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]
    else:
        bounds = [(0, size)]
    chunk_hex: dict[int, str] = {}
    out: dict[str, str] = {}

    def walk(lane: _Lane, report: bool) -> None:
        # Sub-pieces small enough to stay in cache feed every hash of this walk.
        h = hashlib.new(lane.whole) if lane.whole else None
        for i, (off, n) in enumerate(bounds):
            mine = lane.step > 0 and i % lane.step == lane.first
            ch = hashlib.sha256() if mine else None
            for sub in range(off, off + n, _PIECE):
                stop = min(sub + _PIECE, off + n)
                if ready is not None:
                    piece = None  # hold no view of content that may never come
                    ready(stop)
                piece = view[sub:stop]
                if h is not None:
                    h.update(piece)
                if ch is not None:
                    ch.update(piece)
                if report and progress:
                    progress(len(piece))
            if ch is not None:
                chunk_hex[i] = ch.hexdigest()
        if lane.whole and h is not None:
            out[lane.whole] = h.hexdigest()

    lanes = _lanes(["sha256", "sha1"] if sha1 else ["sha256"], chunked)
    if size <= _SMALL or len(lanes) == 1:
        for i, lane in enumerate(lanes):
            walk(lane, i == 0)
    else:
        _walk_on_two_threads(walk, lanes)
    found = [Chunk(off, n, chunk_hex[i]) for i, (off, n) in enumerate(bounds)] if chunked else []
    return Digest(out["sha256"], out.get("sha1"), size, found, chunk_size if chunked else 0)


def _walk_on_two_threads(walk: Callable[[_Lane, bool], None], lanes: list[_Lane]) -> None:
    """Walk the first lane on this thread (it reports progress), the second on a helper."""
    failure: list[BaseException] = []

    def helper_walk() -> None:
        try:
            walk(lanes[1], False)
        except BaseException as e:  # re-raised in the calling thread
            failure.append(e)

    helper = threading.Thread(target=helper_walk, name="kachery-hash")
    helper.start()
    try:
        walk(lanes[0], True)
    finally:
        helper.join()
    if failure:
        raise failure[0]


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


def digest_open_file(
    fd: int, chunk_size: int, progress: ProgressFn | None = None, *, sha1: bool = True,
    chunks: bool = True,
) -> Digest:
    """Digest an open regular file in place: read whole when small, mapped when large."""
    if os.fstat(fd).st_size <= _SMALL:
        return digest_bytes(read_all(fd), chunk_size, progress, sha1=sha1, chunks=chunks)
    with mapped(fd) as view:
        return digest_bytes(view, chunk_size, progress, sha1=sha1, chunks=chunks)


def hash_file(
    path: str | os.PathLike[str], chunk_size: int, progress: ProgressFn | None = None, *,
    sha1: bool = True, chunks: bool = True,
) -> Digest:
    """Digest the file at ``path`` in place (no copy); see :func:`digest_bytes`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_open_file(fd, chunk_size, progress, sha1=sha1, chunks=chunks)
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


def copy_and_hash(
    src: int, dst: int, progress: ProgressFn | None = None, sha1: bool = False
) -> Digest:
    """Copy ``src`` into ``dst`` (opened read-write, empty), hash the copy, fsync it.

    Computes the SHA-256 (and the SHA-1 with ``sha1``, on a second thread),
    not the chunk hashes. The kernel copies a step at a time on one thread
    while the calling thread hashes the steps already copied, so each piece
    is hashed right after it landed and copying, hashing and flushing
    overlap; where the kernel cannot copy between these files, the copy is
    made first and then hashed. What is hashed is the copy, exactly what is
    stored. ``progress`` receives half of each copied piece and half of each
    hashed piece, so a bar over the file's size fills once. SourceFileError
    if ``src`` ends early (it shrank).
    """
    half = (lambda n: progress(n // 2)) if progress else None
    size = os.fstat(src).st_size
    if size <= _SMALL:
        data = read_all(src)
        write_all(dst, data)
        digest = digest_bytes(data, len(data), progress, sha1=sha1, chunks=False)
        os.fsync(dst)
        return digest
    start = os.lseek(src, 0, os.SEEK_CUR)
    try:
        first = os.copy_file_range(src, dst, min(_PIPE_STEP, size - start), start, 0)
    except OSError as e:
        if e.errno not in _NO_KERNEL_COPY:
            raise
        return _copy_then_hash(src, dst, half, sha1)
    size -= start
    os.ftruncate(dst, size)
    copier = _Copier(src, dst, start, size, first, half)
    copier.start()
    try:
        with mapped(dst, populate=False) as view:
            digest = digest_bytes(
                view, size, half, ready=copier.wait_for, sha1=sha1, chunks=False
            )
    finally:
        copier.stop_and_join()
    copier.raise_failure()
    return digest


def _copy_then_hash(src: int, dst: int, half: ProgressFn | None, sha1: bool) -> Digest:
    """Copy first (sendfile or read/write), then hash the copy while it is flushed."""
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
            digest = digest_bytes(view, len(view), half, sha1=sha1, chunks=False)
    finally:
        flusher.join()
    if flushed and flushed[0] is not None:
        raise flushed[0]
    return digest


class _Copier(threading.Thread):
    """Copies a file into a pre-sized one a step at a time, then flushes it.

    Each step's write to disk is started as soon as it is copied, so the
    flush at the end has little left to do. Hashing threads call
    :meth:`wait_for` before reading the copy; they are woken as each step
    lands, and get the copier's error if it fails.
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
            start_writeback(self.dst, 0, self.copied)
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
                start_writeback(self.dst, self.copied - n, n)
                if self.progress:
                    self.progress(n)
            os.fsync(self.dst)
        except BaseException as e:  # handed to the hashing threads and the caller
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
