"""Many blobs written as one batch: one flush for all of them, not two per blob.

Storing a blob on its own costs two fsyncs (the file, then its directory after
the rename) and an index transaction. A zarr array of thousands of chunks
would pay that thousands of times, so its chunks are written through a
:class:`BlobBatch` instead:

* :meth:`BlobBatch.add` hashes the bytes (SHA-256 only: these are parts of a
  larger value, which nobody holds by a kachery ``sha1://`` URI; a value over
  the chunk size is digested in full and gets its manifest at commit) and writes
  them, unflushed, to a temporary file in the store's ``incoming/``; a
  background thread asks the kernel to start writing it to disk, so the disk
  works while the caller computes the next value;
* :meth:`BlobBatch.commit` flushes every temporary file (several at once, so
  the filesystem journals them together), renames each to its final name,
  flushes each directory once, and records every row in one transaction.

Crash safety is the store's own: before ``commit`` nothing is under a final
name and no row exists (``gc`` removes leftovers from ``incoming/``); a blob
is renamed only after its bytes are on disk, and its row is written only
after the rename is.

Blobs added but not yet committed can be read back through :meth:`path`
(zarr reads a chunk back when a later write covers part of it).
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StorageError
from ..fsutil import (
    can_start_writeback,
    fsync_dir,
    fsync_path,
    os_error,
    start_writeback,
    temp_path,
    write_temp,
)
from .hashing import Digest, digest_bytes

if TYPE_CHECKING:
    from .local import LocalStore

# fsyncs issued at once: enough for the journal to group them, few enough for any disk.
_FLUSHERS = 8


class BlobBatch:
    """Blobs written now and made durable, under their final names, together."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._temp: dict[str, Path] = {}  # sha256 -> its unflushed temporary file
        self._sizes: dict[str, int] = {}  # every blob added since the last commit
        self._digests: dict[str, Digest] = {}  # full digests of the large ones
        self._writeback: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        # A copy in another process reads pending blobs from the same files; the
        # store is found again from its node directory.
        self._settle()
        return {
            "node": self.store.node, "temp": dict(self._temp), "sizes": dict(self._sizes),
            "digests": dict(self._digests),
        }

    def __setstate__(self, state: dict) -> None:
        from .local import get_store

        self.store = get_store(state["node"])
        self._lock = threading.Lock()
        self._temp = state["temp"]
        self._sizes = state["sizes"]
        self._digests = state["digests"]
        self._writeback = None

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, data: bytes | bytearray | memoryview) -> str:
        """Write ``data`` (unless the store or this batch has it); return its SHA-256 hex.

        A value larger than the store's chunk size gets what any large blob
        gets (its SHA-1 alias and a manifest of chunk hashes), so it travels
        through buckets in verified chunks like every other large file.
        """
        size = memoryview(data).nbytes
        digest = None
        if size > self.store.chunk_size:
            digest = digest_bytes(data, self.store.chunk_size)
            sha256 = digest.sha256
        else:
            sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            if sha256 in self._sizes:
                return sha256
            self._sizes[sha256] = size
            if digest is not None:
                self._digests[sha256] = digest
        if os.path.exists(self.store.blob_path(sha256)):
            self.store.touch(sha256)  # used now: last in line for gc
            return sha256
        tmp = temp_path(self.store.incoming)
        try:
            write_temp(tmp, data, sync=False)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._sizes.pop(sha256, None)
            raise os_error(e, "cannot write to the store") from e
        with self._lock:
            self._temp[sha256] = tmp
            if can_start_writeback():
                if self._writeback is None:
                    self._writeback = ThreadPoolExecutor(1, thread_name_prefix="kachery-writeback")
                self._writeback.submit(_start_writeback, tmp)
        return sha256

    def _settle(self) -> None:
        """Wait for the background writeback requests (they are only hints)."""
        with self._lock:
            pool, self._writeback = self._writeback, None
        if pool is not None:
            pool.shutdown(wait=True)

    def path(self, sha256: str) -> str | None:
        """Where an added, uncommitted blob can be read (None when it is not pending)."""
        tmp = self._temp.get(sha256)
        return None if tmp is None else str(tmp)

    def commit(self) -> None:
        """Make every added blob durable, under its final name and in the index."""
        self._settle()
        with self._lock:
            temp, sizes, digests = self._temp, self._sizes, self._digests
            self._temp, self._sizes, self._digests = {}, {}, {}
        gone = [h for h in sizes if h not in temp and not os.path.exists(self.store.blob_path(h))]
        if gone:  # evicted by gc since it was found in the store: record nothing
            for tmp in temp.values():
                tmp.unlink(missing_ok=True)
            raise StorageError(
                f"{len(gone)} blob(s) of this batch (e.g. sha256://{gone[0]}) were removed "
                "from the store (by gc) while the batch was being written; write it again"
            )
        try:
            with ThreadPoolExecutor(_FLUSHERS, thread_name_prefix="kachery-flush") as pool:
                list(pool.map(fsync_path, temp.values()))
                parents = {self.store.publish(tmp, h, sync_dir=False) for h, tmp in temp.items()}
                list(pool.map(fsync_dir, parents))
        except OSError as e:
            for tmp in temp.values():
                tmp.unlink(missing_ok=True)
            raise os_error(e, "cannot write to the store") from e
        rows = []
        for sha256, size in sizes.items():
            d = digests.get(sha256)
            manifest = self.store.store_manifest(d) if d is not None else None
            rows.append((sha256, size, d.sha1 if d else None, manifest))
        self.store.index.record_blobs(rows)

    def discard(self) -> None:
        """Remove the temporary files of blobs not committed."""
        self._settle()
        with self._lock:
            temp = self._temp
            self._temp, self._sizes, self._digests = {}, {}, {}
        for tmp in temp.values():
            tmp.unlink(missing_ok=True)


def _start_writeback(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # discarded meanwhile
    try:
        start_writeback(fd)
    finally:
        os.close(fd)
