"""Moving content between the local store and a bucket.

Where things live in a bucket is :mod:`.layout`.

**Upload.** Small content is one create-only object. Larger content is
uploaded chunk by chunk (in parallel, skipping chunks the bucket has), and
its manifest is written *last*: a manifest in the bucket means every chunk it
lists is there. Re-uploading what the bucket already has costs one existence
check. A zarr array's index goes up with every blob it names, the index last.

**Download.** Small content is one object, checked against its id. Larger
content is fetched chunk by chunk into a resumable partial file, each chunk
verified on arrival (:mod:`.fetch`); the whole file is hashed as chunks land
and checked against its id before it enters the store, so nothing
unverified is ever served.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import ContentNotFoundError, CorruptContentError
from ..progress import progress_bar
from ..uris import parse_uri
from .buckets.base import Bucket
from .fetch import done_path, fetch_chunks, partial_path, run_all
from .layout import blob_key, chunk_key, manifest_key
from .local import LocalStore
from .manifest import Manifest
from .zarr_index import read_index_file

__all__ = [
    "UploadReport", "blob_key", "chunk_key", "download", "download_members", "in_bucket",
    "manifest_key", "upload",
]

_BLOBS_FOR_A_BAR = 100  # fetching fewer blobs than this shows no bar


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
    """Put the content ``uri`` names into ``bucket`` (create-only; skips what is there).

    A zarr array's index (see :mod:`.zarr_index`) goes up with every blob it
    names, the index last: a reader who finds the index finds its chunks.
    """
    sha256 = store.resolve(uri)
    report = UploadReport()
    if in_bucket(bucket, sha256):
        report.objects_skipped += 1
        return report
    path = store.load_file(f"sha256://{sha256}")
    threads = threads or store.node.config.transfer_threads
    keys = read_index_file(path, uri)  # a zarr array's index, however large: members first
    if keys is not None:
        _upload_members(store, bucket, sorted(set(keys.values())), report, progress, threads)
    manifest = store.manifest(f"sha256://{sha256}")
    if manifest is None:
        with open(path, "rb") as f:
            data = f.read()
        _count(report, bucket.put(blob_key(sha256), data), len(data))
        return report
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

            for wrote, size in run_all(pool, send, range(len(manifest.chunks))):
                _count(report, wrote, size)
    finally:
        os.close(fd)
    _count(report, bucket.put(manifest_key(sha256), manifest.to_json()), 0)
    return report


def _upload_members(
    store: LocalStore, bucket: Bucket, members: list[str], report: UploadReport,
    progress: bool | None, threads: int,
) -> None:
    """Upload the blobs a zarr index names, several at once, with one progress bar."""
    sizes = {h: os.path.getsize(store.load_file(f"sha256://{h}")) for h in members}
    with progress_bar(
        sum(sizes.values()), f"upload {len(members)} array blobs",
        store.node.config.progress_threshold, progress,
    ) as bar, ThreadPoolExecutor(threads, thread_name_prefix="kachery-up") as pool:

        def send(h: str) -> UploadReport:
            r = upload(store, bucket, f"sha256://{h}", progress=False, threads=1)
            if bar:
                bar(sizes[h])
            return r

        for r in run_all(pool, send, members):
            report.uploaded_bytes += r.uploaded_bytes
            report.objects_written += r.objects_written
            report.objects_skipped += r.objects_skipped


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
        try:
            store.store_bytes(bucket.get(blob_key(sha256)), label=label, expect_sha256=sha256)
        except CorruptContentError:
            raise CorruptContentError(
                f"object {blob_key(sha256)} in {bucket.url} does not hash to its name; "
                "it was corrupted in the bucket; nothing was stored"
            ) from None
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
    digest = fetch_chunks(store, bucket, manifest, progress, threads)
    store.admit(partial_path(store, sha256), sha256, label, digest)
    done_path(store, sha256).unlink(missing_ok=True)
    return store.load_file(f"sha256://{sha256}")


def download_members(
    store: LocalStore, bucket: Bucket, uri: str, progress: bool | None = None,
    threads: int | None = None,
) -> int:
    """Fetch every blob the zarr index ``uri`` names that is not here; return how many.

    ``load_zarr`` fetches chunks lazily, as they are read; this makes a whole
    array local at once (to work offline, say). Each blob is verified like
    any download. 0 when ``uri`` is not a zarr index.
    """
    keys = read_index_file(download(store, bucket, uri, progress=False), uri)
    if keys is None:
        return 0
    missing = sorted(h for h in set(keys.values()) if not store.has(f"sha256://{h}"))
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


