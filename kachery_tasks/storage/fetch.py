"""Fetching a large file's chunks from a bucket into a resumable partial file.

Chunks are fetched in parallel into ``incoming/partial-<hex>`` and each is
verified against its SHA-256 on arrival and recorded in
``partial-<hex>.done``, so an interrupted download resumes where it stopped
(recorded chunks are re-verified from disk before they count, so a crash
that lost unflushed bytes costs a re-fetch, never a wrong byte). A corrupt
chunk fails the download naming the chunk. The caller holds the partial's
lock (see :mod:`.partials`). A full disk removes the partial file, so a
failed download does not leave the disk full.

The bytes are touched as little as possible: each 1 MiB piece of a chunk
is received into a reused buffer (:meth:`Bucket.get_into`), hashed and
written while it is in cache; two follower threads read the file back in
1 MiB pieces for the whole-file SHA-256 and SHA-1, so the whole-file check
is ready right after the last chunk lands; the kernel is asked to start
writing each finished chunk to disk at once, so the fsync before the file
enters the store has almost nothing left to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from pathlib import Path

from ..errors import CorruptContentError, StorageFullError
from ..fsutil import os_error, start_writeback, write_all
from ..progress import progress_bar
from . import partials
from .buckets.base import Bucket
from .hashing import Chunk, Digest
from .layout import chunk_key
from .local import LocalStore
from .manifest import Manifest

_HASH_PIECE = 2**20
_AHEAD = 2  # chunks beyond the thread count a fetch may run ahead of the hashing
REPAIR_HINT = (
    "A node that holds the good bytes can replace the damaged object: "
    "kachery-tasks upload --repair sha256://{sha256}"
)


def fetch_chunks(
    store: LocalStore, bucket: Bucket, manifest: Manifest, progress: bool | None,
    threads: int | None,
) -> Digest:
    """Fetch the missing chunks into the partial file; return the digest of the whole.

    Each fetch thread hashes (SHA-256) and writes every piece of its chunk
    while the piece is in cache. Chunks finish in any order; two follower
    threads read the file back front to back as soon as the next chunk is in
    place, one computing the whole file's SHA-256 and the other its SHA-1, so
    the whole-file check is ready right after the last chunk lands. Fetches
    that would run more than a few chunks ahead of the followers wait, so
    that on a CPU-bound transfer the followers are not starved and left with
    a backlog at the end. Chunks that a previous attempt recorded are
    re-verified from disk before they count.

    Raises StorageFullError (and removes the partial file) when the disk is
    full, and the StorageError for any other failure of the local disk.
    """
    try:
        return _fetch_chunks(store, bucket, manifest, progress, threads)
    except OSError as e:
        error = os_error(e, f"cannot download sha256://{manifest.sha256} from {bucket.url}")
        if isinstance(error, StorageFullError):
            partials.discard(store.incoming, manifest.sha256)
            error = StorageFullError(f"{error} (the partial download was removed)")
        raise error from e


def _fetch_chunks(
    store: LocalStore, bucket: Bucket, manifest: Manifest, progress: bool | None,
    threads: int | None,
) -> Digest:
    sha256 = manifest.sha256
    partial = partials.partial_path(store.incoming, sha256)
    record = partials.done_path(store.incoming, sha256)
    recorded = _read_done(record, manifest) if partial.exists() else set()
    threads = threads or store.node.config.transfer_threads
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, manifest.size)
        done = {i for i in recorded if _chunk_on_disk_ok(fd, manifest.chunks[i])}
        if not done:
            record.unlink(missing_ok=True)
        followers = _Followers(fd, manifest, done, ahead=threads + _AHEAD)
        todo = [i for i in range(len(manifest.chunks)) if i not in done]
        with open(record, "a") as done_file, progress_bar(
            manifest.size, f"download {sha256[:12]}", store.node.config.progress_threshold,
            progress,
        ) as bar, followers, ThreadPoolExecutor(
            1, thread_name_prefix="kachery-flush"
        ) as flusher, ThreadPoolExecutor(threads, thread_name_prefix="kachery-down") as pool:
            if bar:
                bar(sum(manifest.chunks[i].size for i in done))
            if not done:
                done_file.write(json.dumps({"manifest": manifest.to_json().decode()}) + "\n")

            def fetch(i: int) -> int:
                followers.wait_turn(i)
                c = manifest.chunks[i]
                end = c.offset + c.size
                h = hashlib.sha256()
                pos = c.offset

                def land(piece: memoryview) -> None:
                    # Hash and write each piece while it is in cache; no copy of the chunk.
                    nonlocal pos
                    if pos + len(piece) > end:
                        raise _corrupt_chunk(i, c, sha256, bucket)
                    h.update(piece)
                    write_all(fd, piece, pos)
                    pos += len(piece)

                bucket.get_into(chunk_key(c.sha256), land)
                check_chunk(i, c, pos - c.offset, h.hexdigest(), sha256, bucket)
                if bar:
                    bar(c.size)
                return i

            try:
                for i in run_all(pool, fetch, todo):
                    done_file.write(f"{i}\n")
                    done_file.flush()
                    followers.add(i)
                    c = manifest.chunks[i]
                    flusher.submit(start_writeback, fd, c.offset, c.size)
            except BaseException:
                followers.stop()  # before the pool waits for fetches held back by wait_turn
                followers.raise_failure()  # a follower's error is why fetches were cancelled
                raise
        whole, sha1 = followers.result()
    finally:
        os.close(fd)
    # the chunks keep the uploader's chunk size, whatever this node's is
    return Digest(whole, sha1, manifest.size, list(manifest.chunks), manifest.chunk_size)


class _Followers:
    """Two threads hashing a partial file front to back (SHA-256, SHA-1) as chunks land.

    Use as a context manager: entering starts the threads; leaving stops them
    (at once if the block raised, otherwise after they reach the end).
    """

    def __init__(self, fd: int, manifest: Manifest, done: set[int], ahead: int) -> None:
        self.fd, self.chunks, self.ahead = fd, manifest.chunks, ahead
        self.done = set(done)
        self.cond = threading.Condition()
        self.stopped = False
        self.failure: list[BaseException] = []
        self.hashes = {"sha256": hashlib.sha256(), "sha1": hashlib.sha1()}
        self.position = dict.fromkeys(self.hashes, 0)  # chunks each follower has hashed
        self.threads = [
            threading.Thread(target=self._follow, args=(name,), name=f"kachery-{name}")
            for name in self.hashes
        ]

    def __enter__(self) -> _Followers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.stop()
        for t in self.threads:
            t.join()

    def add(self, i: int) -> None:
        """Chunk ``i`` is verified and in the file."""
        with self.cond:
            self.done.add(i)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def wait_turn(self, i: int) -> None:
        """Hold the fetch of chunk ``i`` while it is too far ahead of the slower follower.

        Raises CancelledError once the download is stopping.
        """
        with self.cond:
            while i >= min(self.position.values()) + self.ahead and not self.stopped:
                self.cond.wait()
            if self.stopped:
                raise CancelledError

    def raise_failure(self) -> None:
        if self.failure:
            raise self.failure[0]

    def result(self) -> tuple[str, str]:
        """The whole file's SHA-256 and SHA-1 (after a clean exit)."""
        self.raise_failure()
        if min(self.position.values()) != len(self.chunks):
            raise RuntimeError("the download ended before the whole file was hashed")
        return self.hashes["sha256"].hexdigest(), self.hashes["sha1"].hexdigest()

    def _follow(self, name: str) -> None:
        h = self.hashes[name]
        buf = memoryview(bytearray(_HASH_PIECE))  # small and reused: stays in cache
        try:
            for i, c in enumerate(self.chunks):
                with self.cond:
                    while i not in self.done and not self.stopped:
                        self.cond.wait()
                    if self.stopped:
                        return
                end = c.offset + c.size
                for offset in range(c.offset, end, _HASH_PIECE):
                    want = buf[: min(_HASH_PIECE, end - offset)]
                    n = os.preadv(self.fd, [want], offset)
                    if n != len(want):
                        raise OSError(f"short read of the partial file at byte {offset}")
                    h.update(want)
                with self.cond:
                    self.position[name] = i + 1
                    self.cond.notify_all()
        except BaseException as e:  # reported by result()
            self.failure.append(e)
            self.stop()


def check_chunk(
    i: int, c: Chunk, received: int, digest: str, sha256: str, bucket: Bucket
) -> None:
    """Raise CorruptContentError unless chunk ``i`` arrived whole and with its hash."""
    if received != c.size or digest != c.sha256:
        raise _corrupt_chunk(i, c, sha256, bucket)


def _corrupt_chunk(i: int, c: Chunk, sha256: str, bucket: Bucket) -> CorruptContentError:
    return CorruptContentError(
        f"chunk {i} (sha256 {c.sha256}, bytes {c.offset}..{c.offset + c.size}) "
        f"of sha256://{sha256} is corrupt in bucket {bucket.url}; nothing was stored. "
        f"{REPAIR_HINT.format(sha256=sha256)}"
    )



def _chunk_on_disk_ok(fd: int, chunk: Chunk) -> bool:
    """True when the partial file holds the chunk's verified bytes (resume after a crash)."""
    return hashlib.sha256(os.pread(fd, chunk.size, chunk.offset)).hexdigest() == chunk.sha256


def _read_done(path: Path, manifest: Manifest) -> set[int]:
    """Chunks a previous attempt finished, if it was downloading the same manifest."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return set()
    if not lines:
        return set()
    try:
        if json.loads(lines[0]).get("manifest") != manifest.to_json().decode():
            return set()
    except (ValueError, AttributeError):
        return set()
    done = set()
    for line in lines[1:]:
        if line.strip().isdigit() and int(line) < len(manifest.chunks):
            done.add(int(line))
    return done


def run_all(pool: ThreadPoolExecutor, fn, items):
    """Yield fn(item) results as they finish; on the first failure cancel the rest and raise.

    Each result is yielded as soon as its call returns, so a download records
    and hashes each chunk while the others are still in flight.
    """
    futures = [pool.submit(fn, item) for item in items]
    try:
        for f in as_completed(futures):
            yield f.result()
    finally:
        for f in futures:
            f.cancel()
