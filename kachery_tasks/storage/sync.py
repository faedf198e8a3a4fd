"""Moving content between the local store and a bucket.

Bucket layout (under the bucket's prefix)::

    blobs/sha256/<hex>              content no larger than the chunk size
    chunks/sha256/<chunk hex>       one chunk of larger content
    manifests/sha256/<hex>.json     its manifest (see docs/storage.md)

**Upload.** Small content is one create-only object. Larger content is
uploaded chunk by chunk (in parallel, skipping chunks the bucket has), and
its manifest is written *last*: a manifest in the bucket means every chunk it
lists is there. Re-uploading what the bucket already has costs one existence
check.

**Download.** Chunks are fetched in parallel into ``incoming/partial-<hex>``
and each is verified against its SHA-256 on arrival and recorded in
``partial-<hex>.done``, so an interrupted download resumes where it stopped
(recorded chunks are re-verified from disk before they count, so a crash
that lost unflushed bytes costs a re-fetch, never a wrong byte). A corrupt
chunk fails the download naming the chunk. The whole file is hashed front to
back as chunks land and checked against its id before it enters the store,
so nothing unverified is ever served.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import ContentNotFoundError, CorruptContentError
from ..fsutil import os_error
from ..progress import progress_bar
from ..uris import parse_uri
from .buckets.base import Bucket
from .hashing import Chunk, Digest
from .local import LocalStore
from .manifest import Manifest


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def chunk_key(sha256: str) -> str:
    return f"chunks/sha256/{sha256}"


def manifest_key(sha256: str) -> str:
    return f"manifests/sha256/{sha256}.json"


@dataclass
class UploadReport:
    """What an upload did: bytes sent and objects skipped because the bucket had them."""

    uploaded_bytes: int = 0
    objects_written: int = 0
    objects_skipped: int = 0


def in_bucket(bucket: Bucket, sha256: str) -> bool:
    """True when the bucket holds the content (as a blob or as a complete manifest)."""
    return bucket.exists(manifest_key(sha256)) or bucket.exists(blob_key(sha256))


def upload(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None,
) -> UploadReport:
    """Put the content ``uri`` names into ``bucket`` (create-only; skips what is there)."""
    sha256 = store.resolve(uri)
    path = store.load_file(f"sha256://{sha256}")
    report = UploadReport()
    if in_bucket(bucket, sha256):
        report.objects_skipped += 1
        return report
    manifest = store.manifest(f"sha256://{sha256}")
    if manifest is None:
        with open(path, "rb") as f:
            data = f.read()
        _count(report, bucket.put(blob_key(sha256), data), len(data))
        return report
    threads = threads or store.node.config.transfer_threads
    fd = os.open(path, os.O_RDONLY)
    try:
        with progress_bar(
            manifest.size, f"upload {sha256[:12]}", store.node.config.progress_threshold, progress
        ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-up") as pool:

            def send(i: int) -> tuple[bool, int]:
                c = manifest.chunks[i]
                key = chunk_key(c.sha256)
                if bucket.exists(key):
                    wrote = False
                else:
                    wrote = bucket.put(key, os.pread(fd, c.size, c.offset))
                if bar:
                    bar(c.size)
                return wrote, c.size

            for wrote, size in _run_all(pool, send, range(len(manifest.chunks))):
                _count(report, wrote, size)
    finally:
        os.close(fd)
    _count(report, bucket.put(manifest_key(sha256), manifest.to_json()), 0)
    return report


def _count(report: UploadReport, wrote: bool, size: int) -> None:
    if wrote:
        report.objects_written += 1
        report.uploaded_bytes += size
    else:
        report.objects_skipped += 1


def download(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None,
) -> str:
    """Fetch the content ``uri`` names from ``bucket`` into the store; return its local path.

    Raises ContentNotFoundError when the bucket does not have it and
    CorruptContentError when what it has does not match.
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
        data = bucket.get(blob_key(sha256))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptContentError(
                f"object {blob_key(sha256)} in {bucket.url} does not hash to its name; "
                "it was corrupted in the bucket; nothing was stored"
            )
        store.store_bytes(data, label=label)
        return store.load_file(f"sha256://{sha256}")
    try:
        manifest = Manifest.from_json(bucket.get(manifest_key(sha256)))
    except ContentNotFoundError:
        raise ContentNotFoundError(
            f"{uri} is neither in this node's store nor in bucket {bucket.url}"
        ) from None
    if manifest.sha256 != sha256:
        raise CorruptContentError(
            f"the manifest of {sha256} in {bucket.url} describes other content"
        )
    digest = _fetch_chunks(store, bucket, manifest, progress, threads)
    store.admit(_partial_path(store, sha256), sha256, label, digest)
    _done_path(store, sha256).unlink(missing_ok=True)
    return store.load_file(f"sha256://{sha256}")


def _partial_path(store: LocalStore, sha256: str) -> Path:
    return store.incoming / f"partial-{sha256}"


def _done_path(store: LocalStore, sha256: str) -> Path:
    return store.incoming / f"partial-{sha256}.done"


def _fetch_chunks(
    store: LocalStore, bucket: Bucket, manifest: Manifest, progress: bool | None,
    threads: int | None,
) -> Digest:
    """Fetch the missing chunks into the partial file; return the digest of the whole.

    Chunks arrive in any order; the calling thread hashes the file front to
    back (SHA-256 and SHA-1) as soon as the next chunk is in place, so the
    whole-file check is ready when the last chunk lands. Chunks that a
    previous attempt recorded are re-verified from disk before they count.
    """
    sha256 = manifest.sha256
    partial, done_path = _partial_path(store, sha256), _done_path(store, sha256)
    recorded = _read_done(done_path, manifest) if partial.exists() else set()
    threads = threads or store.node.config.transfer_threads
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise os_error(e, "cannot start the download") from e
    whole, sha1 = hashlib.sha256(), hashlib.sha1()
    try:
        os.ftruncate(fd, manifest.size)
        done = {i for i in recorded if _chunk_on_disk_ok(fd, manifest.chunks[i])}
        if not done:
            done_path.unlink(missing_ok=True)
        next_i = 0
        buf = bytearray(manifest.chunk_size)  # reused: no fresh pages per chunk

        def hash_ready() -> None:
            nonlocal next_i
            while next_i in done:
                c = manifest.chunks[next_i]
                view = memoryview(buf)[: c.size]
                got = os.preadv(fd, [view], c.offset)
                whole.update(view[:got])
                sha1.update(view[:got])
                next_i += 1

        todo = [i for i in range(len(manifest.chunks)) if i not in done]
        with open(done_path, "a") as done_file, progress_bar(
            manifest.size, f"download {sha256[:12]}", store.node.config.progress_threshold,
            progress,
        ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-down") as pool:
            if bar:
                bar(sum(manifest.chunks[i].size for i in done))
            if not done:
                done_file.write(json.dumps({"manifest": manifest.to_json().decode()}) + "\n")
            hash_ready()

            def fetch(i: int) -> int:
                c = manifest.chunks[i]
                data = bucket.get(chunk_key(c.sha256))
                if len(data) != c.size or hashlib.sha256(data).hexdigest() != c.sha256:
                    raise CorruptContentError(
                        f"chunk {i} (sha256 {c.sha256}, bytes {c.offset}..{c.offset + c.size}) "
                        f"of sha256://{sha256} is corrupt in bucket {bucket.url}; "
                        "nothing was stored"
                    )
                view = memoryview(data)
                offset = c.offset
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
                if bar:
                    bar(c.size)
                return i

            for i in _run_all(pool, fetch, todo):
                done.add(i)
                done_file.write(f"{i}\n")
                done_file.flush()
                hash_ready()
    finally:
        os.close(fd)
    return Digest(whole.hexdigest(), sha1.hexdigest(), manifest.size, list(manifest.chunks))


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


def _run_all(pool: ThreadPoolExecutor, fn, items):
    """Yield fn(item) results as they finish; on the first failure cancel the rest and raise."""
    futures = [pool.submit(fn, item) for item in items]
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                if f.exception() is None:
                    yield f.result()
            for f in finished:
                if f.exception() is not None:
                    raise f.exception()
    finally:
        for f in pending:
            f.cancel()
