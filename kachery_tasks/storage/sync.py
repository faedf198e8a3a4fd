"""Moving content between the local store and a bucket.

Where things live in a bucket is :mod:`.layout`.

**Upload.** Small content is one create-only object. Larger content is
uploaded chunk by chunk (in parallel, skipping chunks the bucket has), and
its manifest is written *last*: a manifest in the bucket means every chunk it
lists is there. Re-uploading what the bucket already has costs one existence
check. A zarr array's index goes up with every blob it names, the index last.
Every byte sent is hashed as it is read for sending and checked against the
manifest's chunk hash (or the id, for a small blob): content damaged on this
node's disk is removed from the store and never reaches the bucket.

**Repair.** Objects are written once, so a damaged object would stay damaged.
``upload(..., repair=True)`` reads back every object of the content the
bucket has and replaces each damaged one with verified local bytes, writing
over exactly the object it found damaged (its generation), so it never
clobbers a concurrent repair; missing objects are written. A plain upload
replaces a chunk whose size shows it is damaged (the existence check tells
the size for free).

**Download.** Small content is one object, checked against its id. Larger
content is fetched chunk by chunk into a resumable partial file, each chunk
verified on arrival (:mod:`.fetch`); the whole file is hashed as chunks land
and checked against its id before it enters the store, so nothing
unverified is ever served. One download per file and node runs at a time
(the partial's lock, :mod:`.partials`): a second waits and then finds the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import (
    ContentNotFoundError,
    CorruptContentError,
    InvalidValueError,
    StorageFullError,
)
from ..progress import progress_bar
from ..sizes import format_size
from ..uris import parse_uri
from . import locks, partials
from .buckets.base import Bucket
from .fetch import REPAIR_HINT, fetch_chunks, run_all
from .hashing import Chunk, hash_file
from .layout import blob_key, chunk_key, manifest_key
from .local import LocalStore
from .manifest import Manifest
from .zarr_index import is_index, missing_members, read_index_file

__all__ = [
    "UploadReport", "blob_key", "chunk_key", "download", "download_members", "in_bucket",
    "manifest_key", "upload",
]

_BLOBS_FOR_A_BAR = 100  # fetching fewer blobs than this shows no bar
_WRITTEN, _REPAIRED, _SKIPPED = "written", "repaired", "skipped"


@dataclass
class UploadReport:
    """What an upload did: bytes sent; objects written, repaired, or skipped (already there)."""

    uploaded_bytes: int = 0
    objects_written: int = 0
    objects_skipped: int = 0
    objects_repaired: int = 0

    def add(self, outcome: str, size: int) -> None:
        if outcome == _SKIPPED:
            self.objects_skipped += 1
            return
        self.uploaded_bytes += size
        if outcome == _REPAIRED:
            self.objects_repaired += 1
        else:
            self.objects_written += 1

    def summary(self, repair: bool = False) -> str:
        """One line saying what the upload did (``repair``: it was an upload --repair)."""
        if not self.objects_written and not self.objects_repaired:
            return "already in the bucket" + (", every object checked" if repair else "")
        sent = self.objects_written + self.objects_repaired
        line = f"uploaded {format_size(self.uploaded_bytes)} in {sent} objects"
        if self.objects_repaired:
            line += f" ({self.objects_repaired} of them replaced damaged objects)"
        return line

    def merge(self, other: UploadReport) -> None:
        self.uploaded_bytes += other.uploaded_bytes
        self.objects_written += other.objects_written
        self.objects_skipped += other.objects_skipped
        self.objects_repaired += other.objects_repaired


def in_bucket(bucket: Bucket, sha256: str) -> bool:
    """True when the bucket holds the content (as a blob or as a complete manifest)."""
    return bucket.exists(manifest_key(sha256)) or bucket.exists(blob_key(sha256))


def upload(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None, repair: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> UploadReport:
    """Put the content ``uri`` names into ``bucket`` (create-only; skips what is there).

    ``on_progress(n)`` is called (from the upload threads) as each blob or
    chunk of ``n`` bytes is in the bucket, sent or found there: a node
    answering a request reports its progress with it.

    A zarr array's index (see :mod:`.zarr_index`) goes up with every blob it
    names, the index last: a reader who finds the index finds its chunks.
    What is sent is verified on the way; local bytes that do not match raise
    CorruptContentError (LinkedFileError for a changed linked original)
    after the store stopped serving them, and the content's manifest is not
    written. With ``repair=True`` what the bucket has is read back and
    damaged or missing objects are replaced (see the module docstring).
    """
    sha256 = store.resolve(uri)
    report = UploadReport()
    if not repair and in_bucket(bucket, sha256):
        report.objects_skipped += 1
        return report
    path = store.load_file(f"sha256://{sha256}")
    threads = threads or store.node.config.transfer_threads
    keys = read_index_file(path, uri)  # a zarr array's index, however large: members first
    if keys is not None:
        members = sorted(set(keys.values()))
        _upload_members(store, bucket, members, report, progress, threads, repair, on_progress)
    manifest = store.manifest(f"sha256://{sha256}")
    if manifest is None:
        size = os.path.getsize(path)
        read = lambda: _read_blob(store, sha256, path)  # noqa: E731
        report.add(_send(bucket, blob_key(sha256), sha256, size, read, repair), size)
        if on_progress is not None:
            on_progress(size)
        return report
    if (manifest.sha256, manifest.size) != (sha256, os.path.getsize(path)):
        raise _bad_manifest(sha256, "it describes other content")
    fd = os.open(path, os.O_RDONLY)
    try:
        with progress_bar(
            manifest.size, f"upload {sha256[:12]}", store.node.config.progress_threshold, progress
        ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-up") as pool:

            def send(i: int) -> tuple[str, int]:
                c = manifest.chunks[i]
                read = lambda: _read_chunk(store, sha256, path, fd, i, c)  # noqa: E731
                outcome = _send(bucket, chunk_key(c.sha256), c.sha256, c.size, read, repair)
                if bar:
                    bar(c.size)
                if on_progress is not None:
                    on_progress(c.size)
                return outcome, c.size

            for outcome, size in run_all(pool, send, range(len(manifest.chunks))):
                report.add(outcome, size)
    finally:
        os.close(fd)
    doc = manifest.to_json()
    digest = hashlib.sha256(doc).hexdigest()
    report.add(_send(bucket, manifest_key(sha256), digest, len(doc), lambda: doc, repair), 0)
    return report


def upload_data(bucket: Bucket, data: bytes, uri: str) -> UploadReport:
    """Put small content held in memory (a result kept inline in the records) into
    ``bucket`` as its blob, without writing it to a store first (create-only; skips what
    is there). Raises CorruptContentError when ``data`` is not what ``uri`` names. A zarr
    array's index is not sent this way (its members go first: :func:`upload`)."""
    if is_index(data):
        raise InvalidValueError(f"{uri} is a zarr array's index: upload it from a store, "
                                "with its members")
    sha256 = parse_uri(uri).hex
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptContentError(f"the bytes offered as {uri} hash to something else")
    report = UploadReport()
    report.add(_send(bucket, blob_key(sha256), sha256, len(data), lambda: data, False),
               len(data))
    return report


def download_data(bucket: Bucket, uri: str, max_size: int) -> bytes | None:
    """The bytes of the content ``uri`` names when ``bucket`` holds it as one blob of at most
    ``max_size`` bytes (verified), else None: small content for a record to keep inline,
    with no file written. None for a zarr array's index (it goes to the store, where
    its members are found). CorruptContentError when the blob is damaged."""
    parsed = parse_uri(uri)
    if parsed.algorithm != "sha256":
        return None
    key = blob_key(parsed.hex)
    info = bucket.stat(key)
    if info is None or info.size > max_size:
        return None
    try:
        data = bucket.get(key)
    except ContentNotFoundError:  # removed meanwhile
        return None
    if hashlib.sha256(data).hexdigest() != parsed.hex:
        raise CorruptContentError(
            f"object {key} in {bucket.url} does not hash to its name; it was corrupted in "
            f"the bucket. {REPAIR_HINT.format(sha256=parsed.hex)}")
    return None if is_index(data) else data


def _send(
    bucket: Bucket, key: str, sha256: str, size: int, read: Callable[[], bytes], repair: bool
) -> str:
    """Make object ``key`` hold the ``size`` bytes of hash ``sha256`` that ``read()`` returns.

    ``read`` (called only when bytes must be sent) returns verified bytes.
    An object already there is kept unless its size is wrong or, with
    ``repair``, its bytes are; then it is replaced, that generation only.
    """
    info = bucket.stat(key)
    if info is None:
        return _WRITTEN if bucket.put(key, read()) else _SKIPPED
    if info.size == size and not repair:
        return _SKIPPED
    if info.size == size:
        try:
            if _object_sha256(bucket, key) == sha256:
                return _SKIPPED
        except ContentNotFoundError:  # removed meanwhile
            return _WRITTEN if bucket.put(key, read()) else _SKIPPED
    return _REPAIRED if bucket.replace(key, read(), info.generation) else _SKIPPED


def _object_sha256(bucket: Bucket, key: str) -> str:
    """The SHA-256 of what object ``key`` holds (read back, piece by piece)."""
    h = hashlib.sha256()
    bucket.get_into(key, h.update)
    return h.hexdigest()


def _read_blob(store: LocalStore, sha256: str, path: str) -> bytes:
    """The whole of small content, checked against its id."""
    with open(path, "rb") as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise store.discard_corrupt(sha256, path, f"hash to {actual}; nothing was uploaded")
    return data


def _read_chunk(store: LocalStore, sha256: str, path: str, fd: int, i: int, c: Chunk) -> bytes:
    """Chunk ``i`` of large content, checked against its hash in the manifest."""
    data = os.pread(fd, c.size, c.offset)
    if len(data) == c.size and hashlib.sha256(data).hexdigest() == c.sha256:
        return data
    # The bytes or the manifest are wrong: the whole file's hash tells which.
    if hash_file(path, store.chunk_size, sha1=False, chunks=False).sha256 == sha256:
        raise _bad_manifest(sha256, f"chunk {i} does not match the file")
    raise store.discard_corrupt(
        sha256, path, f"do not match chunk {i} of their manifest; its manifest was not uploaded"
    )


def _bad_manifest(sha256: str, why: str) -> CorruptContentError:
    return CorruptContentError(
        f"the stored manifest of sha256://{sha256} is damaged ({why}); nothing more was "
        "uploaded. Run 'kachery-tasks verify' and upload again"
    )


def _upload_members(
    store: LocalStore, bucket: Bucket, members: list[str], report: UploadReport,
    progress: bool | None, threads: int, repair: bool,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Upload the blobs a zarr index names, several at once, with one progress bar."""
    sizes = {h: os.path.getsize(store.load_file(f"sha256://{h}")) for h in members}
    with progress_bar(
        sum(sizes.values()), f"upload {len(members)} array blobs",
        store.node.config.progress_threshold, progress,
    ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-up") as pool:

        def send(h: str) -> UploadReport:
            r = upload(store, bucket, f"sha256://{h}", progress=False, threads=1, repair=repair,
                       on_progress=on_progress)
            if bar:
                bar(sizes[h])
            return r

        for r in run_all(pool, send, members):
            report.merge(r)


def download(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None,
) -> str:
    """Fetch the content ``uri`` names from ``bucket`` into the store; return its local path.

    Raises ContentNotFoundError when the bucket does not have it,
    CorruptContentError when what it has does not match (naming the damaged
    object) and StorageFullError when the disk fills up (nothing is left
    behind then).
    """
    parsed = parse_uri(uri)
    if parsed.algorithm != "sha256":
        raise ContentNotFoundError(
            f"{uri}: only sha256:// content can be fetched from a bucket"
        )
    sha256 = parsed.hex
    if store.has(f"sha256://{sha256}"):
        return store.load_file(f"sha256://{sha256}")
    label = parsed.label
    if bucket.exists(blob_key(sha256)):
        try:
            store.store_bytes(bucket.get(blob_key(sha256)), label=label, expect_sha256=sha256)
        except CorruptContentError:
            raise CorruptContentError(
                f"object {blob_key(sha256)} in {bucket.url} does not hash to its name; "
                f"it was corrupted in the bucket; nothing was stored. "
                f"{REPAIR_HINT.format(sha256=sha256)}"
            ) from None
        return store.load_file(f"sha256://{sha256}")
    try:
        manifest = Manifest.from_json(bucket.get(manifest_key(sha256)))
        if manifest.sha256 != sha256:
            raise CorruptContentError("it describes other content")
    except ContentNotFoundError:
        raise ContentNotFoundError(
            f"{uri} is neither in this node's store nor in bucket {bucket.url}"
        ) from None
    except CorruptContentError as e:
        raise CorruptContentError(
            f"object {manifest_key(sha256)} in {bucket.url} is damaged ({e}); nothing was "
            f"stored. {REPAIR_HINT.format(sha256=sha256)}"
        ) from None
    lock = partials.lock_path(store.incoming, sha256)
    with locks.hold(lock):  # a second download of this file waits here, then finds it
        try:
            if not store.has(f"sha256://{sha256}"):
                _fetch_and_admit(store, bucket, manifest, label, progress, threads)
        finally:
            locks.remove_held(lock)  # a partial left for a resume is judged by its lock
    return store.load_file(f"sha256://{sha256}")


def _fetch_and_admit(
    store: LocalStore, bucket: Bucket, manifest: Manifest, label: str | None,
    progress: bool | None, threads: int | None,
) -> None:
    """Fetch large content into its partial file and move it into the store (lock held)."""
    sha256 = manifest.sha256
    digest = fetch_chunks(store, bucket, manifest, progress, threads)
    try:
        store.admit(partials.partial_path(store.incoming, sha256), sha256, label, digest)
    except (StorageFullError, CorruptContentError):  # nothing worth resuming, or no room
        partials.discard(store.incoming, sha256)
        raise
    partials.discard(store.incoming, sha256)


def download_members(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None,
) -> int:
    """Fetch every blob the zarr index ``uri`` names that is not here; return how many.

    ``load_zarr`` fetches chunks lazily, as they are read; this makes a whole
    array local at once (to work offline, say). Each blob is verified like
    any download. 0 when ``uri`` is not a zarr index.
    """
    missing = missing_members(download(store, bucket, uri, progress=False), uri, store.has)
    if missing is None:
        return 0
    threads = threads or store.node.config.transfer_threads
    with progress_bar(
        len(missing), f"download {len(missing)} array blobs", _BLOBS_FOR_A_BAR, progress,
        unit="blobs",
    ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-down") as pool:

        def fetch(h: str) -> None:
            download(store, bucket, f"sha256://{h}", progress=False, threads=1)
            if bar:
                bar(1)

        for _ in run_all(pool, fetch, missing):
            pass
    return len(missing)


